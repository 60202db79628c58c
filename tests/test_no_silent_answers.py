"""Issue 13: every row of its table, each now an error naming the field, value and range, or a
flagged infeasible result with its reason (and how far it misses).

Rows covered elsewhere: a sweep resumed for another model or base chip
(test_sweep.py::test_resume_refuses_a_different_sweep_and_names_what_changed and
::test_fingerprint_tells_study_objectives_of_two_models_apart); `sweep.seed = -1`, an unwritable
`[output] dir` (refused before any computation) and the CLI's pipeline that does not divide the
layers (test_cli.py::BAD_CONFIGS); traced plans and lengths flagged
(test_properties.py, test_training.py::test_plans_that_do_not_fit_model_or_system_...).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

import dse
from dse import models
from dse.cli import main
from dse.hardware import (
    CHIPS,
    CONTINUOUS_CHIP_FIELDS,
    FIELDS,
    REASON_TEXT,
    SYSTEMS,
    Chip,
    Reason,
    cost,
    describe_reason,
)
from dse.hardware import units as u
from dse.hardware._technology import WAFER_AREA_MM2

H100 = CHIPS["H100-SXM"]
DGX = SYSTEMS["DGX-H100"]
GPT3 = models.TRANSFORMERS["gpt3-175b"]
LLAMA = models.TRANSFORMERS["llama3-70b"]


def test_hbm_capacity_without_bandwidth_is_an_error_and_no_sweep_reaches_it():
    message = (r"Chip\.hbm_bandwidth and Chip\.hbm_bytes must both be > 0 \(a chip with HBM\) "
               r"or both 0 \(operands in SRAM\); got hbm_bandwidth 0 B/s and hbm_bytes "
               r"8\.58993e\+10 B")
    with pytest.raises(ValueError, match=message):
        H100.replace(hbm_bandwidth=0.0)
    # The grid sweep over [0, 4 TB/s] that put the 0 B/s design alone on the front.
    with pytest.raises(ValueError, match=r"Param 'hbm_bandwidth': bound 0 is not a valid value"):
        dse.Space(DGX, [dse.Param("hbm_bandwidth", "chip.hbm_bandwidth", 0.0, 4e12, "linear")])
    # Below 1 GB/s an HBM interface is not one (a typo for TB/s, or a runaway optimizer).
    with pytest.raises(ValueError, match=r"hbm_bandwidth must be finite and 0 \(none\) or in "
                                         r"\[1e\+09, 1e\+15\]; got 1000"):
        H100.replace(hbm_bandwidth=1e3)
    # A chip without HBM is fine: what does not fit in its SRAM is flagged SRAM, with its miss.
    sram_only = H100.replace(hbm_bandwidth=0.0, hbm_bytes=0.0, hbm_generation="none")
    report = models.train_step(GPT3, models.TrainingPlan(tp=8, global_batch=8),
                               DGX.replace(chip=sram_only))
    assert int(report.reason) == Reason.SRAM and not bool(report.fits)
    np.testing.assert_allclose(float(report.memory_shortfall),
                               float(report.memory_per_chip) - float(sram_only.sram_bytes),
                               rtol=1e-6)


def test_best_plan_of_a_model_far_bigger_than_memory_is_flagged_with_its_shortfall():
    system = DGX.with_num_chips(64)
    system = system.replace(chip=system.chip.replace(hbm_bytes=1 * u.GiB))
    knobs = dict(recompute=(2,), zero_stages=(3,), sequence_parallel=(1,))
    plan, report = models.best_plan(GPT3, system, 64, **knobs)
    assert not bool(report.fits) and int(report.reason) == Reason.MEMORY
    # Not the fastest infeasible plan: the one that misses least, and by how much it misses.
    plans = models.enumerate_plans(GPT3, 64, 64, **knobs)
    reports = jax.jit(lambda p: models.evaluate_plans(GPT3, p, system))(plans)
    short = np.asarray(reports.memory_shortfall)
    np.testing.assert_allclose(float(report.memory_shortfall), short.min(), rtol=1e-6)
    assert float(report.memory_shortfall) > 10 * u.GiB
    assert float(report.step_time) > np.asarray(reports.step_time).min()


def test_train_step_plan_that_does_not_fill_the_system_or_split_the_batch_is_an_error():
    system = DGX.with_num_chips(1024)
    good = models.TrainingPlan(tp=8, pp=8, dp=16, microbatch_size=1, global_batch=1536,
                               interleave=2)
    with pytest.raises(ValueError, match=r"TrainingPlan\.tp \* cp \* pp \* dp must be the "
                                         r"system's 1024 chips \(System\.num_chips\); got 512"):
        models.train_step(GPT3, good.replace(dp=8), system)
    with pytest.raises(ValueError, match=r"TrainingPlan\.global_batch must be a multiple of "
                                         r"dp \* microbatch_size = 32 .*; got 1520"):
        models.train_step(GPT3, good.replace(microbatch_size=2, global_batch=1520), system)


def test_pipeline_of_7_stages_for_96_layers_is_an_error():
    system = DGX.with_num_chips(8 * 7 * 16)
    plan = models.TrainingPlan(tp=8, pp=7, dp=16, global_batch=1536)
    with pytest.raises(ValueError, match=r"TrainingPlan\.pp must be a divisor of the model's 96 "
                                         r"layers; got 7"):
        models.train_step(GPT3, plan, system)


@pytest.mark.parametrize(("plan", "args", "message"), [
    (dict(tp=16), (32, 2048, 256), r"InferencePlan\.tp \* pp \* ep must be a divisor of the "
                                   r"system's 8 chips \(whole replicas of the plan\); got 16"),
    (dict(tp=3), (32, 2048, 256), r"InferencePlan\.tp \* pp \* ep must be a divisor of the "
                                  r"system's 8 chips .*; got 3"),
    (dict(tp=8), (32, -5, 256), r"serve\.input_len must be a whole number in \[1, 16777216\]; "
                                r"got -5"),
    (dict(tp=8), (32, 2048, 0), r"serve\.output_len must be a whole number in \[1, 16777216\]; "
                                r"got 0"),
    (dict(tp=8), (1e12, 2048, 256), r"serve\.batch must be a whole number in \[1, 16777216\]; "
                                    r"got 1e\+12"),
])
def test_inference_plans_and_lengths_out_of_range_are_errors(plan, args, message):
    with pytest.raises(ValueError, match=message):
        models.serve(LLAMA, models.InferencePlan(**plan), DGX, *args)


@pytest.mark.parametrize("field", ["sram_bytes", "hbm_bytes", "mac_units"])
def test_sram_hbm_macs_of_1e30_are_errors_naming_the_range(field):
    message = re.escape(f"Chip.{field} must be {FIELDS[field].allowed}; got 1e+30")
    with pytest.raises(ValueError, match=message):
        H100.replace(**{field: 1e30})


def _chips_over(lo, hi, n, rng):
    """n chips with every continuous field log-uniform in [lo, hi] (per field)."""
    x = np.exp(np.log(lo) + rng.random((n, len(lo))) * (np.log(hi) - np.log(lo)))
    return Chip(**{f: x[:, j] for j, f in enumerate(CONTINUOUS_CHIP_FIELDS)},
                hbm_generation="HBM3")


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_cost_is_finite_with_finite_gradients_or_unmanufacturable(x64):
    with jax.enable_x64(x64):
        # All 11 chip fields over the presets' span (HBM and link fields over the chips that
        # have them), and near the upper bounds, where dies larger than a wafer overflowed.
        presets = np.array([[float(getattr(c, f)) for f in CONTINUOUS_CHIP_FIELDS]
                            for c in CHIPS.values() if float(c.hbm_bytes) > 0])
        everyone = np.array([[float(getattr(c, f)) for f in CONTINUOUS_CHIP_FIELDS]
                             for c in CHIPS.values()])
        lo, hi = np.minimum(presets.min(0), everyone.min(0)), everyone.max(0)
        hbm = [CONTINUOUS_CHIP_FIELDS.index(f) for f in ("hbm_bandwidth", "hbm_bytes",
                                                         "link_count", "link_bandwidth")]
        lo[hbm], hi[hbm] = presets.min(0)[hbm], presets.max(0)[hbm]
        # Narrow engines (rate 0: none) over the span of the presets that have them.
        absent = lo <= 0.0
        lo[absent] = np.array([everyone[everyone[:, i] > 0, i].min()
                               for i in np.flatnonzero(absent)])
        top = np.array([FIELDS[f].max_value for f in CONTINUOUS_CHIP_FIELDS])
        rng = np.random.default_rng(0)
        bottom = np.array([FIELDS[f].min_value for f in CONTINUOUS_CHIP_FIELDS])
        chips = [_chips_over(lo, hi, 2000, rng),
                 _chips_over(np.maximum(top / 10, bottom), top, 500, rng)]

        def total(chip):
            return cost(chip).total

        run = jax.jit(jax.vmap(lambda c: (cost(c), jax.grad(total)(c))))
        for chip in chips:
            report, grad = run(chip)
            assert np.all(np.isfinite(np.asarray(report.total)))
            for leaf in jax.tree.leaves(grad):
                assert np.all(np.isfinite(np.asarray(leaf)))
            too_big = np.asarray(dse.hardware.area(chip).per_die) > WAFER_AREA_MM2
            flagged = np.asarray(report.reason) == Reason.UNMANUFACTURABLE
            assert np.all(flagged[too_big])
        assert flagged.any()  # near the bounds, some dies cannot be made


def test_budgets_nothing_meets_print_no_feasible_design(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = (REPO / "examples" / "h100_gpt3_training.toml").read_text()
    config = config.replace("power = 1000 ", "power = -5 ")
    path = tmp_path / "nothing.toml"
    path.write_text(config)
    assert main(["sweep", str(path), "--n", "256", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 feasible rows kept, 0 on the feasible front" in out
    assert "NO FEASIBLE DESIGN" in out
    rows = [line for line in out.split("misses:")[1].splitlines() if " GHz " in line]
    assert rows and all("INFEASIBLE: " in row and "power <= -5 W missed by" in row
                        for row in rows)


def test_optimize_never_calls_an_infeasible_design_its_answer():
    space = dse.Space(H100, [dse.Param.from_field(H100, "sram_bytes")])

    def objective(chip):
        # Everything below 400 MiB of SRAM "does not fit"; nothing above it is on the front.
        short = jnp.maximum(400 * u.MiB - chip.sram_bytes, 0.0)
        return {"area": dse.hardware.area(chip).per_die, "memory_shortfall": short,
                "reason": jnp.where(short > 0, float(Reason.MEMORY), 0.0)}

    result = dse.optimize(objective, space, objectives=["area"], n_pilot=16, n_preferences=2,
                          n_starts=1, outer_steps=2, inner_steps=5, progress=False)
    assert result.status == "ok"
    assert np.all(result.metrics["memory_shortfall"][result.front] == 0)
    flagged = np.asarray(result.metrics["reason"]) != 0
    assert flagged.any() and not result.feasible[flagged].any()
    assert all("memory per chip exceeds the HBM capacity (short by" in r
               for r in result.reason[flagged])
    # All flagged: no front, and the message says why.
    everything = dse.optimize(lambda c: objective(c) | {"reason": jnp.asarray(4.0)}, space,
                              objectives=["area"], n_pilot=16, n_preferences=2, n_starts=1,
                              outer_steps=1, inner_steps=2, progress=False)
    assert everything.status == "infeasible" and len(everything.front) == 0
    assert "infeasible in the model (memory per chip exceeds the HBM capacity)" in \
        everything.message


def test_fractional_counts_are_errors_not_truncations():
    with pytest.raises(ValueError, match=r"System\.num_chips must be a whole number in "
                                         r"\[1, 16777216\]; got 1\.7"):
        DGX.with_num_chips(1.7)
    with pytest.raises(ValueError, match=r"enumerate_plans\.global_batch must be a whole number "
                                         r"in \[1, 16777216\]; got 1536\.5"):
        models.best_plan(GPT3, DGX.with_num_chips(1024), 1536.5)
    with pytest.raises(ValueError, match=r"TrainingPlan\.tp must be a whole number .*; got 1\.5"):
        models.TrainingPlan(tp=1.5)
    with pytest.raises(ValueError, match=r"InferencePlan\.batch must be a whole number .*; "
                                         r"got 2\.5"):
        models.InferencePlan(batch=2.5)
    assert DGX.with_num_chips(16.0).num_chips == 16


def test_sensitivity_ranks_tpot_by_the_size_of_the_effect():
    # The TPOT case: the clock moves TPOT by a billionth of a percent and costs no area;
    # HBM bandwidth moves it by 0.86 % per % and costs area. The bandwidth comes first.
    fields = ("chip.clock_hz", "chip.hbm_bandwidth", "chip.mac_units")
    result = dse.SensitivityResult(
        fields=fields, metrics=("tpot", "area"), directions={"tpot": "min", "area": "min"},
        values={"tpot": np.array(0.01), "area": np.array(800.0)},
        elasticity={"tpot": np.array([1.7e-9, -0.86, -0.05]),
                    "area": np.array([0.0, 0.06, 0.5])},
        field_values=np.array([1.8e9, 3.35e12, 5e5]), binding={}, limits={},
        limiting=np.array(""), budgets={}, utilization={}, binding_budget=np.array(""),
        batch_shape=())
    for per in (None, "area"):
        ranked = result.table("tpot", per=per)
        assert list(ranked["field"]) == ["chip.hbm_bandwidth", "chip.mac_units",
                                         "chip.clock_hz"]


def test_reason_flags_are_distinct_powers_of_two_each_described():
    # One set of flags for hardware, plans, workloads and clusters: a reason combines them with
    # `|`, so two flags sharing a bit would read as each other.
    flags = [r for r in Reason if r != Reason.OK]
    values = [int(r) for r in flags]
    assert all(v > 0 and v & (v - 1) == 0 for v in values) and len(set(values)) == len(values)
    assert set(REASON_TEXT) == set(flags)
    assert describe_reason(Reason.MEMORY | Reason.NETWORK) == \
        f"{REASON_TEXT[Reason.MEMORY]}; {REASON_TEXT[Reason.NETWORK]}"
    assert describe_reason(0) == "ok"
