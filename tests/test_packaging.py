"""`pip install .` (not editable) into a fresh virtual environment imports every subpackage."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv

import pytest
from helpers import REPO

SUBPACKAGES = ["dse", "dse.hardware", "dse.models", "dse.optimizers", "dse.data"]


@pytest.mark.slow
def test_plain_pip_install_into_fresh_venv_imports_every_subpackage(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # The dependencies come from this environment (a .pth file), so the test needs no network;
    # dse itself is built from the source tree and installed as a regular (non-editable) wheel.
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True)
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    with open(os.path.join(purelib.stdout.strip(), "zz_outer.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    build = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                            "--quiet", str(REPO)], capture_output=True, text=True,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    # The published data installs with the package (fits and validation read it at run time).
    probe = ("import importlib, json; mods = [importlib.import_module(m) for m in "
             f"{SUBPACKAGES!r}]; import dse.data as d; "
             "assert all(d.path(f).is_file() for f in d.FILES), d.data_dir(); "
             "print(json.dumps([m.__file__ for m in mods]))")
    run = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr[-2000:]
    files = json.loads(run.stdout)
    for name, path in zip(SUBPACKAGES, files, strict=True):
        assert str(env_dir) in path, f"{name} imported from {path}, not the fresh venv"
        assert str(REPO) not in path
    cli = subprocess.run([env_dir / "bin" / "dse", "--help"], capture_output=True, text=True)
    assert cli.returncode == 0 and "demo" in cli.stdout
    assert sys.version_info >= (3, 11)
