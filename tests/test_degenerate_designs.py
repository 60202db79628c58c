"""Designs at the edges of the space: no links, no HBM, empty contexts. Finite or a named error.

Regressions for what a random NaN hunt over the whole parameter space found.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dse.hardware import Chip, System
from dse.models import TRANSFORMERS, TrainingPlan, all_reduce, attention, send_recv, train_step


def _chip(**changes) -> Chip:
    fields = dict(mac_units=5e5, clock_hz=1.5e9, vector_flops=5e13, sram_bytes=5e8,
                  hbm_bandwidth=2e12, hbm_bytes=8e10, link_count=12.0, link_bandwidth=25e9,
                  node_nm=7.0, core_count=100.0)
    fields.update(changes)
    return Chip(**fields)


def _system(chip, scaleup_size=8.0) -> System:
    return System(chip=chip, num_chips=8, scaleup_size=scaleup_size, scaleup_latency=1e-6,
                  scaleout_bandwidth=50e9, scaleout_latency=5e-6)


def test_scaleup_domain_needs_links():
    with pytest.raises(ValueError, match=r"System\.scaleup_size must be 1 when the chip has no "
                                         r"links"):
        _system(_chip(link_count=0.0))


def test_chip_without_links_communicates_over_scaleout_only():
    with jax.enable_x64(True):
        system = _system(_chip(link_count=0.0), scaleup_size=1.0)
        assert float(all_reduce(system, 1e6, 1.0).time) == 0.0
        assert float(send_recv(system, 1e6, 1.0).time) == 0.0
        t = all_reduce(system, 1e6, 8.0).time
        assert np.isfinite(float(t)) and float(t) > 0
        grad = jax.grad(lambda c: all_reduce(system.replace(chip=c), 1e6, 8.0).time)(system.chip)
        assert np.isfinite(float(grad.link_bandwidth)) and np.isfinite(float(grad.mac_units))


def test_training_energy_gradient_is_finite_without_hbm():
    with jax.enable_x64(True):
        chip = _chip(hbm_bandwidth=0.0, hbm_bytes=0.0, hbm_generation="none")
        plan = TrainingPlan(tp=2.0, dp=4.0, global_batch=8.0)

        def energy(c):
            return train_step(TRANSFORMERS["gpt-1.7b"], plan, _system(c)).energy

        # Jitted: op by op, the step and its gradient compile each operation on its own.
        assert np.isfinite(float(jax.jit(energy)(chip)))
        grad = jax.jit(jax.grad(energy))(chip)
        for field in ("mac_units", "clock_hz", "sram_bytes", "link_bandwidth", "node_nm"):
            assert np.isfinite(float(getattr(grad, field))), field


def test_attention_over_an_empty_context_is_finite():
    chip = _chip()
    cost = attention(chip, 1, 32, 8, 1, 0, 128)
    assert np.isfinite(float(cost.time))
    grad = jax.grad(lambda c: attention(c, 1, 32, 8, 1, 0, 128).time)(chip)
    assert np.isfinite(float(grad.hbm_bandwidth))
