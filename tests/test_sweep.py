"""sweep: values, one compilation, sharded == unsharded, resume == uninterrupted, streaming
Pareto == brute force, NaN reports, the table's conversions, clear errors."""

import os
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from helpers import xla_flags
from test_pareto import brute_force_mask

from dse import (
    Param,
    Space,
    SweepInfeasibleWarning,
    SweepNaNWarning,
    SweepResult,
    pareto_mask,
    sweep,
)
from dse.hardware import Chip


def a100_like() -> Chip:
    # A100 SXM4 80GB public spec (see tests/test_space.py for the derivation).
    return Chip(mac_units=110592, clock_hz=1.41e9, vector_flops=19.5e12, sram_bytes=57.3e6,
                hbm_bandwidth=2.0e12, hbm_bytes=80e9, link_count=12, link_bandwidth=25e9,
                node_nm=7, core_count=108, hbm_generation="HBM2e")


SPACE = Space(a100_like(), [
    Param("sram", "sram_bytes", 4e6, 1e9, "log"),
    Param("links", "link_count", 4, 18, "integer"),
    Param("hbm_bw", "hbm_bandwidth", 0.5e12, 8e12, "log"),
    Param("clock", "clock_hz", 0.8e9, 2.0e9),
])
DIRECTIONS = {"time": "min", "cost": "min", "bw": "max"}


def objective(chip):
    """A toy roofline with a trade-off (not a model of anything): time vs silicon vs bandwidth."""
    flops, bytes_ = 1e15, 4e12 * (1.0 + 2e7 / chip.sram_bytes)
    time_s = jnp.maximum(flops / chip.peak_flops, bytes_ / chip.hbm_bandwidth)
    cost = chip.sram_bytes / 1e7 + chip.link_count + chip.hbm_bandwidth / 1e12 \
        + chip.clock_hz / 2e8
    return {"time": time_s, "cost": cost, "bw": chip.link_count * chip.link_bandwidth}


def direct(space, x):
    """The objective at points x, evaluated outside sweep."""
    out = jax.jit(jax.vmap(lambda xi: objective(space.build(xi))))(jnp.asarray(x, jnp.float32))
    return {k: np.asarray(v) for k, v in out.items()}


def test_base_design_is_an_input_of_the_kernel():
    """Two spaces over different base designs of one structure: each sweep follows its own base
    (the base travels as an argument so one program serves both; it must not be stale)."""
    other = Space(a100_like().replace(mac_units=2 * 110592, link_bandwidth=50e9), SPACE.params)
    for space in (SPACE, other):
        r = sweep(objective, space, 256, chunk_size=256, progress=False)
        x = np.stack([r[name] for name in space.names], axis=1)
        want = direct(space, x)
        for k in DIRECTIONS:
            np.testing.assert_allclose(r[k], want[k], rtol=1e-6)
    assert not np.allclose(sweep(objective, other, 256, progress=False)["time"],
                           sweep(objective, SPACE, 256, progress=False)["time"])


def test_values_match_direct_evaluation_and_space_sample():
    r = sweep(objective, SPACE, 1000, chunk_size=256, progress=False,
              constraints={"cost": ("<=", 120.0), "bw": (">=", 2e11)})
    assert len(r) == r.n_points == 1000
    np.testing.assert_array_equal(r["index"], np.arange(1000))
    x = SPACE.sample(1000, "sobol", seed=0)
    for j, name in enumerate(SPACE.names):
        np.testing.assert_allclose(r[name], x[:, j], rtol=4e-6)
    ref = direct(SPACE, np.stack([r[k] for k in SPACE.names], 1))
    for k in ("time", "cost", "bw"):
        np.testing.assert_allclose(r[k], ref[k], rtol=1e-6)
    np.testing.assert_allclose(r["margin_cost"], 120.0 - r["cost"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(r["margin_bw"], r["bw"] - 2e11, rtol=1e-5)
    np.testing.assert_array_equal(r.feasible, (r["cost"] <= 120.0) & (r["bw"] >= 2e11))
    assert 0 < r.feasible.sum() < 1000
    assert r.params == tuple(SPACE.names) and r.constraints == ("margin_cost", "margin_bw")


@pytest.mark.parametrize("method", ["grid", "random"])
def test_other_streams_are_space_sample(method):
    n = 4**4
    r = sweep(objective, SPACE, n, chunk_size=64, method=method, seed=3, progress=False)
    x = SPACE.sample(n, method, seed=3)
    np.testing.assert_allclose(np.stack([r[k] for k in SPACE.names], 1), x, rtol=4e-6)


def test_lhs_is_a_latin_hypercube_per_chunk():
    r = sweep(objective, SPACE, 512, chunk_size=128, method="lhs", seed=1, progress=False)
    u = np.asarray(SPACE.to_unit(np.stack([r[k] for k in SPACE.names], 1)), np.float64)
    for c in range(4):
        strata = np.floor(u[c * 128:(c + 1) * 128, 3] * 128).astype(int)
        assert len(np.unique(np.clip(strata, 0, 127))) >= 126


def test_one_compilation_whatever_the_number_of_chunks():
    traces = []

    def counted(chip):
        traces.append(1)
        return objective(chip)

    sweep(counted, SPACE, 64, chunk_size=64, progress=False)
    one_chunk = len(traces)
    traces.clear()
    sweep(counted, SPACE, 64 * 9 + 5, chunk_size=64, progress=False)  # padded last chunk
    assert len(traces) == one_chunk <= 2  # eval_shape for the metric names + the one lowering


def test_sharded_equals_unsharded():
    assert len(jax.devices()) == 4  # tests/conftest.py forces 4 host devices
    kw = dict(chunk_size=128, progress=False, constraints={"cost": ("<=", 120.0)})
    one = sweep(objective, SPACE, 700, devices=jax.devices()[:1], **kw)
    four = sweep(objective, SPACE, 700, **kw)
    for k in one.columns:
        np.testing.assert_array_equal(one[k], four[k], err_msg=k)
    p1 = sweep(objective, SPACE, 700, devices=jax.devices()[:1], keep="pareto",
               directions=DIRECTIONS, **kw)
    p4 = sweep(objective, SPACE, 700, keep="pareto", directions=DIRECTIONS, **kw)
    for k in p1.columns:
        np.testing.assert_array_equal(p1[k], p4[k], err_msg=k)


@pytest.mark.parametrize("method", ["sobol", "random"])
def test_streaming_pareto_equals_brute_force(method):
    kw = dict(chunk_size=64, progress=False, method=method, seed=5,
              constraints={"cost": ("<=", 150.0)})
    full = sweep(objective, SPACE, 1500, directions=DIRECTIONS, **kw)
    stream = sweep(objective, SPACE, 1500, keep="pareto", directions=DIRECTIONS, **kw)
    values = np.stack([full[k] for k in DIRECTIONS], 1)
    ref = np.flatnonzero(brute_force_mask(values, list(DIRECTIONS.values()), full.feasible))
    assert len(ref) > 5
    np.testing.assert_array_equal(stream["index"], ref)
    for k in full.columns:
        np.testing.assert_array_equal(stream[k], full[k][ref], err_msg=k)
    np.testing.assert_array_equal(full.pareto()["index"], ref)
    assert stream.keep == "pareto" and stream.n_points == 1500


def test_streaming_pareto_with_no_feasible_point_keeps_least_bad_front():
    kw = dict(chunk_size=64, progress=False, constraints={"cost": ("<=", 0.0)})
    # Kept and flagged, and said out loud: nothing here is an answer.
    with pytest.warns(SweepInfeasibleWarning, match=r"none of the 500 points is feasible"):
        full = sweep(objective, SPACE, 500, **kw)
    with pytest.warns(SweepInfeasibleWarning, match=r"rows returned are infeasible"):
        stream = sweep(objective, SPACE, 500, keep="pareto",
                       directions={"time": "min", "cost": "min"}, **kw)
    assert not full.feasible.any() and not stream.feasible.any()
    ref = np.flatnonzero(pareto_mask(np.stack([full["time"], full["cost"]], 1), "min"))
    np.testing.assert_array_equal(stream["index"], ref)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("keep", ["all", "pareto"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, keep):
    kw = dict(chunk_size=64, progress=False, keep=keep, directions=DIRECTIONS,
              constraints={"cost": ("<=", 150.0)})
    ref = sweep(objective, SPACE, 600, **kw)

    def stop_after_3(chunks_done, points_done):
        if chunks_done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        sweep(objective, SPACE, 600, path=tmp_path, callback=stop_after_3, **kw)
    progress = []
    resumed = sweep(objective, SPACE, 600, path=tmp_path,
                    callback=lambda c, p: progress.append((c, p)), **kw)
    assert progress[0] == (4, 256)  # chunks 0-2 were not evaluated again
    for k in ref.columns:
        np.testing.assert_array_equal(resumed[k], ref[k], err_msg=k)
    again = sweep(objective, SPACE, 600, path=tmp_path, **kw)  # all done: nothing to run
    for k in ref.columns:
        np.testing.assert_array_equal(again[k], ref[k], err_msg=k)
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]


class CalibratedObjective:
    """The toy objective with a calibration it exposes, as dse's study objectives do."""

    def __init__(self, calibration):
        self.calibration = calibration

    def __call__(self, chip):
        out = objective(chip)
        return out | {"time": out["time"] / self.calibration.matrix_max}


def test_resume_refuses_a_different_sweep_and_names_what_changed(tmp_path, monkeypatch):
    import dse._fingerprint as fingerprint
    from dse.models import DEFAULT

    kw = dict(chunk_size=64, progress=False, path=tmp_path)
    calibrated = CalibratedObjective(DEFAULT)
    sweep(calibrated, SPACE, 200, **kw)
    # A killed run's half-written chunk: removed on the next start, never read.
    stray = tmp_path / f".chunk_{1:09d}.npz.tmp.99999"
    stray.write_bytes(b"half a chunk")
    again = sweep(calibrated, SPACE, 200, **kw)
    assert not stray.exists() and len(again) == 200
    with pytest.raises(ValueError, match=r"holds a different sweep \(differs in \['seed'\]\)"):
        sweep(calibrated, SPACE, 200, seed=1, **kw)
    # Another base chip (the swept fields are the same, the rest is not).
    other_base = Space(a100_like().replace(vector_flops=40e12), SPACE.params)
    with pytest.raises(ValueError, match=r"differs in \['base design'\]"):
        sweep(calibrated, other_base, 200, **kw)
    # Another computation: the metrics of another model would come back under the new name.
    with pytest.raises(ValueError, match=r"differs in \['objective \(what is computed"):
        sweep(objective, SPACE, 200, **kw)
    # Another calibration changes what is computed too; both are named.
    other = CalibratedObjective(DEFAULT.replace(matrix_max=0.5))
    with pytest.raises(ValueError, match=r"differs in \['objective .*', 'calibration'\]"):
        sweep(other, SPACE, 200, **kw)
    # A new release of the library or of JAX.
    monkeypatch.setattr(fingerprint, "library_version", lambda: "dse 9.9, jax 9.9")
    with pytest.raises(ValueError, match=r"library version: was dse .*, now dse 9.9, jax 9.9"):
        sweep(calibrated, SPACE, 200, **kw)


def test_fingerprint_tells_study_objectives_of_two_models_apart():
    from dse._fingerprint import sweep_fingerprint
    from dse._study import make_objective
    from dse.hardware import SYSTEMS
    from dse.models import TRANSFORMERS, InferencePlan

    system = SYSTEMS["DGX-H100"]
    plan = InferencePlan(tp=8, batch=8)
    a, b = (sweep_fingerprint(make_objective("inference", TRANSFORMERS[name], plan, 8, 8, 128, 16),
                              system) for name in ("llama3-8b", "llama3-70b"))
    assert a["objective"] != b["objective"]
    assert (a["base_design"], a["calibration"], a["library"]) == (
        b["base_design"], b["calibration"], b["library"])


def test_infeasible_reason_keeps_a_point_off_the_front():
    def flagged(chip):
        out = objective(chip)
        # The fastest designs are "out of memory": they must not be on the front.
        return out | {"reason": jnp.where(chip.sram_bytes > 1e8, 4.0, 0.0)}

    r = sweep(flagged, SPACE, 512, chunk_size=128, progress=False, directions=DIRECTIONS,
              keep="pareto")
    assert len(r) > 0 and np.all(r["reason"] == 0) and np.all(r.feasible)
    assert np.all(r["sram"] <= 1e8)
    full = sweep(flagged, SPACE, 512, chunk_size=128, progress=False, directions=DIRECTIONS)
    np.testing.assert_array_equal(full.feasible, full["reason"] == 0)
    assert (~full.feasible).sum() > 100


KILLED_SCRIPT = """
import sys, time
import jax.numpy as jnp
sys.path.insert(0, {tests!r})
from test_sweep import DIRECTIONS, SPACE, objective
from dse import sweep

def slow(c, p):
    print(c, flush=True)
    time.sleep(0.3)

sweep(objective, SPACE, 2000, chunk_size=64, progress=False, path={path!r}, callback=slow,
      keep={keep!r}, directions=DIRECTIONS, checkpoint_s=0.0)
"""


@pytest.mark.parametrize("keep", ["all", "pareto"])
def test_resume_after_sigkill_equals_uninterrupted(tmp_path, keep):
    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "run.py"
    out = tmp_path / "sweep"
    script.write_text(KILLED_SCRIPT.format(tests=tests, path=str(out), keep=keep))
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    with open(tmp_path / "stderr.txt", "w") as err, subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=err, env=env,
            text=True) as proc:
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if int(line) >= 4:
                os.kill(proc.pid, signal.SIGKILL)
                break
        if proc.poll() is None and time.time() >= deadline:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    if keep == "all":
        done = sorted(p for p in os.listdir(out) if p.startswith("chunk_"))
    else:
        with np.load(out / "front.npz") as state:
            done = list(state["done"])
    assert 4 <= len(done) < 32
    kw = dict(chunk_size=64, progress=False, keep=keep, directions=DIRECTIONS)
    progress = []
    resumed = sweep(objective, SPACE, 2000, path=out, callback=lambda c, p: progress.append(c),
                    **kw)
    assert progress[0] == len(done) + 1
    ref = sweep(objective, SPACE, 2000, **kw)
    for k in ref.columns:
        np.testing.assert_array_equal(resumed[k], ref[k], err_msg=k)


def nan_objective(chip):
    out = objective(chip)
    # NaN for small SRAM (a model defect the sweep must surface, not hide).
    out["time"] = jnp.where(chip.sram_bytes < 6e6, jnp.nan, out["time"])
    return out


@pytest.mark.parametrize("keep", ["all", "pareto"])
def test_nan_points_are_reported_not_dropped(keep):
    with pytest.warns(SweepNaNWarning, match=r"points gave NaN metrics.*point \d+ \(time\)"):
        r = sweep(nan_objective, SPACE, 800, chunk_size=128, progress=False, keep=keep,
                  directions=DIRECTIONS)
    x = SPACE.sample(800)
    expected = np.flatnonzero(x[:, 0].astype(np.float32) < 6e6)
    assert len(expected) > 5
    np.testing.assert_array_equal(r.nan_index, expected)
    assert r.nan_count == len(expected)
    assert all(m == ("time",) for m in r.nan_metrics)
    if keep == "all":
        assert np.isnan(r["time"][expected]).all() and not r.feasible[expected].any()
    else:
        assert not np.isin(r["index"], expected).any()


def test_nan_records_are_capped_but_counted():
    with pytest.warns(SweepNaNWarning):
        r = sweep(nan_objective, SPACE, 800, chunk_size=128, progress=False,
                  max_nan_records=3)
    assert len(r.nan_index) == 3 and r.nan_count > 3


def test_table_conversions_round_trip(tmp_path):
    r = sweep(objective, SPACE, 300, chunk_size=64, progress=False, directions=DIRECTIONS,
              constraints={"cost": ("<=", 150.0)})
    df = r.to_pandas()
    assert list(df.columns) == ["index", *SPACE.names, "bw", "cost", "time", "margin_cost",
                                "feasible"]
    assert len(df) == 300
    r.to_csv(tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv")
    np.testing.assert_allclose(back["time"], r["time"], rtol=1e-6)
    np.testing.assert_array_equal(back["feasible"], r.feasible)
    r.to_npz(tmp_path / "t.npz")
    loaded = SweepResult.from_npz(tmp_path / "t.npz")
    for k in r.columns:
        np.testing.assert_array_equal(loaded[k], r[k])
    assert loaded.directions == DIRECTIONS and loaded.constraints == r.constraints


def test_progress_bar_reports_points_per_second(capsys):
    sweep(objective, SPACE, 256, chunk_size=64, progress=True)
    err = capsys.readouterr().err
    assert "256/256" in err and "pt/s" in err


def test_nested_vmap_objective_in_bounded_memory():
    """A best_plan-like objective: the best of several candidate mappings per design."""
    candidates = jnp.array([0.5, 1.0, 2.0, 4.0])

    def best_of(chip):
        times = jax.vmap(lambda f: objective(chip)["time"] * f + 1e-3 / f)(candidates)
        return {"time": jnp.min(times), "cost": objective(chip)["cost"]}

    r = sweep(best_of, SPACE, 3000, chunk_size=256, progress=False, keep="pareto",
              directions={"time": "min", "cost": "min"})
    full = sweep(best_of, SPACE, 3000, chunk_size=256, progress=False)
    np.testing.assert_array_equal(r["index"], np.flatnonzero(
        pareto_mask(np.stack([full["time"], full["cost"]], 1))))


@pytest.mark.parametrize("kwargs, message", [
    (dict(chunk_size=100), "chunk_size must be a power of two"),
    (dict(keep="front"), "keep must be 'all' or 'pareto'"),
    (dict(keep="pareto"), "keep='pareto' needs directions"),
    (dict(directions={"speed": "min"}), "direction for unknown metric 'speed'"),
    (dict(directions={"time": "fast"}), "direction of 'time' must be 'min' or 'max'"),
    (dict(constraints={"cost": ("<", 3)}), "constraint 'cost' must be"),
    (dict(constraints={"area": ("<=", 3)}), "constraint on unknown metric 'area'"),
    (dict(method="halton"), "method must be one of"),
    (dict(method="grid"), "grid sampling of 4 params needs n = k\\*\\*4; got n=100"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sweep(objective, SPACE, 100, progress=False, **kwargs)


def test_bad_objectives_raise():
    with pytest.raises(ValueError, match="must return a non-empty dict"):
        sweep(lambda c: c.sram_bytes, SPACE, 10, progress=False)
    with pytest.raises(ValueError, match="metric 'v' must be a scalar per design"):
        sweep(lambda c: {"v": jnp.stack([c.sram_bytes, c.clock_hz])}, SPACE, 10,
              progress=False)
    with pytest.raises(ValueError, match="number of points"):
        sweep(objective, SPACE, 0, progress=False)


def test_no_warning_on_a_clean_sweep():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = sweep(objective, SPACE, 100, progress=False)
    assert r.nan_count == 0 and len(r.nan_index) == 0


def test_float64_sweep_is_exact_to_space_sample():
    with jax.enable_x64(True):
        full = sweep(objective, SPACE, 300, chunk_size=64, progress=False, directions=DIRECTIONS)
        front = sweep(objective, SPACE, 300, chunk_size=64, progress=False, keep="pareto",
                      directions=DIRECTIONS)
    assert full["time"].dtype == np.float64
    x = SPACE.sample(300)
    for j, name in enumerate(SPACE.names):
        np.testing.assert_allclose(full[name], x[:, j], rtol=1e-12)
    np.testing.assert_array_equal(front["index"], full.pareto()["index"])


def test_pareto_sweep_whose_every_point_is_on_the_front():
    """More survivors than the kernel's compacted output holds: the chunk is rerun in full."""
    def tradeoff(chip):
        return {"small": chip.sram_bytes, "large": 1e9 / chip.sram_bytes}

    kw = dict(chunk_size=256, progress=False, directions={"small": "min", "large": "min"})
    stream = sweep(tradeoff, SPACE, 700, keep="pareto", **kw)
    full = sweep(tradeoff, SPACE, 700, **kw)
    assert len(stream) == len(full.pareto()) > 650  # ties of float32 rounding aside, all
    np.testing.assert_array_equal(stream["index"], full.pareto()["index"])
