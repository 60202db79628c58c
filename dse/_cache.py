"""JAX's persistent compilation cache, on by default for everything that imports `dse`.

A model compiles once per machine, not once per process: the CLI, notebooks and scripts load
the compiled GPT-3 step, plan search or sweep kernel from disk the second time (measured in
`benchmarks/compile_times.py`).

- On by default, in `$XDG_CACHE_HOME/dse/jax` (`~/.cache/dse/jax`), storing every program
  that took at least 0.2 s to compile (JAX's own default, 1 s, leaves out most model programs
  here).
- Off with `DSE_COMPILATION_CACHE=0` in the environment (before `import dse`), with
  `dse --no-compile-cache ...` on the command line, or with `dse.compilation_cache(False)`.
- A cache the user configured for JAX (`JAX_COMPILATION_CACHE_DIR`, as the test suite does) is
  left as it is, and so are `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` / `..._ENTRY_SIZE_BYTES`.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "DSE_COMPILATION_CACHE"
MIN_COMPILE_S = 0.2  # programs compiling faster than this are recompiled, not stored
_OFF = ("0", "false", "off", "no")


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/dse/jax`, or `~/.cache/dse/jax`."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "dse" / "jax"


def compilation_cache(enable: bool = True, path: str | os.PathLike | None = None) -> str | None:
    """Switch JAX's persistent compilation cache on (in `path`, default `default_cache_dir()`
    or the one JAX already uses) or off; returns the folder in use (None when off).

    Takes effect for programs compiled afterwards in this process.
    """
    if not enable:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = path or jax.config.jax_compilation_cache_dir or default_cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_enable_compilation_cache", True)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    return str(folder)


def enable_by_default() -> str | None:
    """At `import dse`: the cache on unless `DSE_COMPILATION_CACHE` says off."""
    if os.environ.get(ENV, "1").strip().lower() in _OFF:
        return compilation_cache(False)
    return compilation_cache(True)
