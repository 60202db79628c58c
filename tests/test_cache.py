"""The persistent compilation cache: on by default at `import dse`, off by env var or CLI flag."""

import os
import subprocess
import sys

# Also whether flax was loaded: `import dse` must not pay for the learned residual's flax
# (0.8 CPU-s in every process) until it is used.
PROBE = ("import sys, jax, dse; c = jax.config; print(c.jax_enable_compilation_cache, "
         "c.jax_compilation_cache_dir, c.jax_persistent_cache_min_compile_time_secs, "
         "'flax' in sys.modules)")


def _probe(env_changes, args=()):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "DSE_"))}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def test_cache_is_on_by_default_in_the_users_cache_folder(tmp_path):
    enabled, folder, min_s, flax_loaded = _probe({"XDG_CACHE_HOME": str(tmp_path)})
    assert flax_loaded == "False"
    assert enabled == "True"
    assert folder == str(tmp_path / "dse" / "jax")
    assert float(min_s) == 0.2


def test_env_var_turns_it_off(tmp_path):
    enabled, *_ = _probe({"XDG_CACHE_HOME": str(tmp_path), "DSE_COMPILATION_CACHE": "0"})
    assert enabled == "False"


def test_a_folder_jax_was_given_is_kept(tmp_path):
    _, folder, min_s, _ = _probe({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine"),
                               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "3"})
    assert folder == str(tmp_path / "mine")
    assert float(min_s) == 3.0


def test_cli_flag_turns_it_off(tmp_path):
    import jax

    from dse import cli

    was = jax.config.jax_enable_compilation_cache
    try:
        jax.config.update("jax_enable_compilation_cache", True)
        status = cli.main(["--no-compile-cache", "evaluate", str(tmp_path / "missing.toml")])
        assert status == cli.EXIT_BAD_INPUT  # the flag acts before the command runs
        assert jax.config.jax_enable_compilation_cache is False
    finally:
        jax.config.update("jax_enable_compilation_cache", was)


def test_suite_compiles_with_the_conftest_flags_and_subprocesses_inherit_them():
    # conftest.py's environment is in effect: four host devices, and XLA's fast-compile options
    # unless TEST_XLA_FAST_COMPILE=0 or the caller set XLA_FLAGS; helpers.xla_flags keeps them
    # for a subprocess and changes only the device count.
    import jax
    from helpers import xla_flags

    flags = os.environ["XLA_FLAGS"].split()
    assert "--xla_force_host_platform_device_count=4" in flags
    assert len(jax.devices("cpu")) == 4
    fast = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")
    if os.environ.get("TEST_XLA_FAST_COMPILE", "1") != "0":
        assert all(f in flags for f in fast)
    child = xla_flags(2).split()
    assert child[0] == "--xla_force_host_platform_device_count=2"
    assert sorted(child[1:]) == sorted(f for f in flags if "device_count" not in f)
