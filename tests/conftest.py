"""Strict JAX for every test: rank promotion raises, warnings are errors (pyproject)."""

import os

# Four host devices so that sharding tests run on a CPU-only machine. Must precede jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
