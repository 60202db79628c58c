"""Multi-host sweep: two local CPU processes under `jax.distributed` == one process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import xla_flags

from dse import SweepResult, sweep

WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = {xla_flags!r}
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize("127.0.0.1:{port}", num_processes=2, process_id=int(sys.argv[1]),
                           initialization_timeout=60)
sys.path.insert(0, {tests!r})
from test_sweep import DIRECTIONS, SPACE, objective
from dse import sweep

assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
kw = dict(chunk_size=64, progress=False, constraints={{"cost": ("<=", 150.0)}})
full = sweep(objective, SPACE, 1000, **kw)
front = sweep(objective, SPACE, 1000, keep="pareto", directions=DIRECTIONS, **kw)
full.to_npz({out!r} + f"/full_{{sys.argv[1]}}.npz")
front.to_npz({out!r} + f"/front_{{sys.argv[1]}}.npz")
jax.distributed.shutdown()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh JAX processes: 15-30 s on 2 shared cores
def test_two_processes_equal_one(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(port=free_port(), tests=tests, out=str(tmp_path),
                                    xla_flags=xla_flags(2)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)

    from test_sweep import DIRECTIONS, SPACE, objective

    kw = dict(chunk_size=64, progress=False, constraints={"cost": ("<=", 150.0)})
    ref_full = sweep(objective, SPACE, 1000, **kw)
    ref_front = sweep(objective, SPACE, 1000, keep="pareto", directions=DIRECTIONS, **kw)
    for rank in (0, 1):
        for name, ref in (("full", ref_full), ("front", ref_front)):
            got = SweepResult.from_npz(tmp_path / f"{name}_{rank}.npz")
            assert len(got) == len(ref) > 0
            for k in ref.columns:
                np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name} {rank} {k}")


@pytest.fixture(autouse=True)
def _tests_on_path():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    yield
    sys.path.remove(os.path.dirname(os.path.abspath(__file__)))
