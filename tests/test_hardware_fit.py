"""Hardware models against published figures; the fits behind the constants reproduce them."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import data_dir

from dse.calibration._hardware_data import (
    POWER_FIT_CHIPS,
    fit_compute_transistors,
    fit_mma_size_term,
    fit_power_constants,
    read_chips_csv,
    tdp_compute_activity,
)
from dse.hardware import CHIPS, PUBLISHED, Activity, area, power
from dse.hardware._area import COMPUTE_TRANSISTORS
from dse.hardware._power import ENERGY_PER_MAC_7NM, STATIC_POWER_PER_MM2
from dse.hardware._presets import CHIPS_CSV_NAME


@pytest.fixture(scope="module")
def rows():
    return read_chips_csv(data_dir())


def test_fitted_area_constants_are_what_the_fit_returns(rows):
    fitted = fit_compute_transistors(data_dir())
    for kind, values in fitted.items():
        for key, value in values.items():
            np.testing.assert_allclose(COMPUTE_TRANSISTORS[kind][key], value, rtol=1e-6)


def test_fitted_power_constants_are_what_the_fit_returns():
    fitted = fit_power_constants(data_dir())
    np.testing.assert_allclose(ENERGY_PER_MAC_7NM, fitted["energy_per_mac_7nm"], rtol=1e-4)
    np.testing.assert_allclose(STATIC_POWER_PER_MM2, fitted["static_power_per_mm2"], atol=1e-6)


def test_published_table_matches_chips_csv(rows):
    # Chips without a chips.csv row (B300, GB300, MI325X, MI355X) cite their sources in
    # `_presets.py`.
    assert set(CHIPS_CSV_NAME) <= set(CHIPS)
    assert set(CHIPS) - set(CHIPS_CSV_NAME) == {"B300", "GB300", "MI325X", "MI355X"}
    for name, published in PUBLISHED.items():
        if name not in CHIPS_CSV_NAME:
            continue
        row = rows[name]
        if published.die_area_mm2 is not None:
            assert float(row["die_area_mm2"]) == published.die_area_mm2, name
        else:
            assert row["die_area_mm2"] == "", name
        if published.tdp_w is not None:
            assert float(row["tdp_w"]) == published.tdp_w, name


# Die area within 12% of the published figure. GC200 is a known miss (23% under): one
# (per-core, per-MAC) pair cannot fit Groq, Cerebras and Graphcore together, and GA100's uncore
# fraction under-sizes the IPU's all-to-all exchange (see `_area.COMPUTE_TRANSISTORS`).
AREA_CASES = [name for name, p in PUBLISHED.items() if p.die_area_mm2 is not None]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="GC200 area 23% under: its tile "
                                            "logic and exchange (Hot Chips 33 split) exceed the "
                                            "spatial fit and GA100's uncore fraction"))
    if n == "GC200" else n for n in AREA_CASES])
def test_die_area_within_12_percent(name):
    with jax.enable_x64(True):
        predicted = float(area(CHIPS[name]).per_die)
    assert abs(predicted / PUBLISHED[name].die_area_mm2 - 1) <= 0.12, predicted


def test_a100_block_breakdown_within_25_percent():
    """GA100 die-shot blocks (tech.csv `die_breakdown`, LLMCompass Fig. 6a) block by block."""
    chip = CHIPS["A100-80GB"]
    with jax.enable_x64(True):
        report = area(chip)
        l2 = float(area(chip.replace(sram_bytes=40 * 2**20)).sram)
        per_core_sram = float(report.sram) - l2
        predicted = {
            "cores": float(report.compute) + per_core_sram,
            "global buffer (L2)": l2,
            "memory PHY": float(report.hbm_phy),
            "memory controller": float(report.hbm_controller),
            "off-chip interconnect PHY": float(report.link_phy),
            # The die shot has no separate link controller: it sits in the uncore blocks.
            "on-chip interconnect + other": float(report.uncore + report.link_controller),
        }
    measured = {"cores": 476.25, "global buffer (L2)": 119.31, "memory PHY": 58.0,
                "memory controller": 31.77, "off-chip interconnect PHY": 20.95,
                "on-chip interconnect + other": 76.44 + 40.0}
    for block, value in measured.items():
        assert abs(predicted[block] / value - 1) <= 0.25, (block, predicted[block], value)


def test_gc200_sram_block_matches_graphcores_die_split():
    """Hot Chips 33 (Knowles, via Hardwareluxx): SRAM is almost 50% of GC200's 823 mm^2.

    The split is read off a slide, so the GA100 block tolerance (25%) applies.
    """
    with jax.enable_x64(True):
        sram = float(area(CHIPS["GC200"]).sram)
    assert abs(sram / (0.5 * PUBLISHED["GC200"].die_area_mm2) - 1) <= 0.25, sram


# Chips with a chips.csv row (its measured matmul sets the operating point).
GPU_TDP_CASES = [n for n, p in PUBLISHED.items()
                 if p.is_gpu and p.tdp_w is not None and n in CHIPS_CSV_NAME]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="Blackwell's energy per MAC is "
                                            "~45% below Hopper's on the same N4-family node; "
                                            "the in-sample TDPs give no weight to a per-SM "
                                            "MMA-size term, and even 0 W of HBM leaves B200 "
                                            "+25%"))
    if n in ("B200", "GB200") else n for n in GPU_TDP_CASES])
def test_gpu_power_at_tdp_operating_point_within_20_percent(name, rows):
    activity = Activity(compute=tdp_compute_activity(rows[name]), hbm=1.0, link=1.0)
    with jax.enable_x64(True):
        predicted = float(power(CHIPS[name], activity).total)
    assert abs(predicted / PUBLISHED[name].tdp_w - 1) <= 0.20, predicted


def test_tdps_give_no_weight_to_an_mma_size_term():
    """Why B200 stays a miss: V100..H200 imply one energy per MAC, not one falling as n^(-1/3)."""
    fitted = fit_mma_size_term(data_dir())
    assert fitted["fetch_at_1024"] == 0.0
    np.testing.assert_allclose(fitted["arith_7nm"], ENERGY_PER_MAC_7NM, rtol=1e-4)


def test_power_validation_holds_out_chips():
    held_out = set(GPU_TDP_CASES) - set(POWER_FIT_CHIPS)
    assert {"B200", "GB200", "MI250X", "MI300X"} <= held_out
