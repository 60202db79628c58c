"""Fidelity on the hardware people buy now: the per-chip matmul fraction, the fused-attention
model and its fit to the FlashAttention tables, ZeRO-3 / FSDP communication, every training row
modelled or skipped with a reason, external checks kept out of fits, prediction intervals.

Long validation (every row, leave-one-source-out) is benchmarks/validate.py; these are the cheap
checks of the pieces it is built from.
"""

from __future__ import annotations

import collections
import csv
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference, data_dir

from dse.calibration import (
    SkippedRow,
    TrainingRows,
    fit_previous_generation_scale,
    prediction_interval,
    source_spread,
    spread_dof,
    training_measurements,
    training_rows,
)
from dse.calibration._attention_data import (
    ATTENTION_FIELDS,
    attention_kernel_ratios,
    attention_rows,
    measured_seconds,
    modelled_seconds,
)
from dse.calibration._training_data import LOW_PRECISION, MOE_MODELZOO
from dse.hardware import CHIPS, SYSTEMS
from dse.hardware._chip import TYPICAL_MATMUL_FRACTION
from dse.hardware._presets import CHIPS_CSV_NAME
from dse.models import DEFAULT, TrainingPlan, attention, attention_backward
from dse.models._data_parallel import data_parallel_cost
from dse.models._memory import StageParams

H100 = CHIPS["H100-SXM"]


def _chips_csv():
    with open(data_dir() / "chips.csv", newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


# ----- the chip's measured best-GEMM fraction ---------------------------------------------------

def test_matmul_fraction_is_the_measured_rate_and_the_typical_one_their_median():
    rows = _chips_csv()
    measured = {n: float(r["measured_max_matmul_bf16_tflops"]) / float(r["peak_dense_bf16_tflops"])
                for n, r in rows.items() if r["measured_max_matmul_bf16_tflops"]}
    assert len(measured) == 7
    np.testing.assert_allclose(TYPICAL_MATMUL_FRACTION, np.median(list(measured.values())),
                               rtol=1e-4)
    for preset, name in CHIPS_CSV_NAME.items():
        want = measured.get(name, TYPICAL_MATMUL_FRACTION)
        if preset in ("A100-80GB", "H200"):  # the same die as the measured A100 40GB / H100
            continue
        np.testing.assert_allclose(float(CHIPS[preset].matmul_fraction), want, rtol=1e-6,
                                   err_msg=preset)
    # H100 sustains a smaller share of its peak than A100 (the first symptom).
    assert float(H100.matmul_fraction) < float(CHIPS["A100-80GB"].matmul_fraction)


# ----- fused attention against the FlashAttention tables ----------------------------------------

def _tflops(chip, hd, seq, causal, direction="fwd", cal=DEFAULT):
    """Modelled TFLOP/s with the benchmarks' counting (16k tokens, hidden 2048)."""
    shape = (16384 / seq, 2048 / hd, 2048 / hd, seq, seq, hd)
    fwd = attention(chip, *shape, causal=causal, calibration=cal)
    bwd = attention_backward(chip, *shape, causal=causal, calibration=cal)
    counted = 4.0 * 16384 * seq * 2048 / (2.0 if causal else 1.0)
    t = {"fwd": fwd.time, "bwd": bwd.time / 2.5}[direction]
    return counted / float(t) / 1e12


@pytest.mark.parametrize("chip,hd,seq,causal,direction,published", [
    # FlashAttention-2 paper Fig. 5 / 6 (A100): forward 223, backward 186 TFLOP/s.
    ("A100-80GB", 128, 16384, False, "fwd", 223.0),
    ("A100-80GB", 128, 16384, True, "bwd", 186.0),
    # FlashAttention-3 paper, FP16 forward (H100): 616 causal, 292 causal at 512 tokens.
    ("H100-SXM", 128, 16384, True, "fwd", 616.0),
    ("H100-SXM", 128, 512, True, "fwd", 292.0),
    # FlashAttention-4 paper (B200): 1613 forward, non-causal, 32k.
    ("B200", 128, 32768, False, "fwd", 1613.0),
])
def test_attention_reproduces_published_kernel_throughput(chip, hd, seq, causal, direction,
                                                          published):
    # Within 15% (the fit's mean |error| over 143 bars is 5.6%, its worst 23%).
    got = _tflops(CHIPS[chip], hd, seq, causal, direction)
    np.testing.assert_allclose(got, published, rtol=0.15)


def test_attention_slower_for_small_heads_short_and_causal_sequences():
    long_128 = _tflops(H100, 128, 16384, False)
    assert _tflops(H100, 64, 16384, False) < long_128  # softmax work per score, per d
    assert _tflops(H100, 128, 1024, False) < long_128  # exposed per-block I/O
    assert _tflops(H100, 128, 1024, True) < _tflops(H100, 128, 1024, False)  # masked blocks
    # A kernel one generation behind runs at attention_previous_scale of the rate.
    old = _tflops(H100, 128, 16384, False, cal=DEFAULT.with_previous_generation_attention())
    np.testing.assert_allclose(old / long_128, float(DEFAULT.attention_previous_scale),
                               rtol=0.02)


@pytest.mark.parametrize("kernel,gpu", [("FlashAttention (v1)", "H100 80GB SXM5"),
                                        ("FlashAttention-2", "B200")])
def test_two_generations_older_kernel_runs_at_the_squared_one_generation_scale(kernel, gpu):
    # attention_previous_scale is fitted to kernels one generation older than their chip only
    # (PREVIOUS_GENERATION); kernels two generations older (FlashAttention v1 on H100,
    # FlashAttention-2 on B200: FlashAttention-2 and -4 papers' figures) are out of that fit.
    # Their measured / modelled throughput is the squared scale within 12% (0.32 and 0.30
    # measured against 0.29): each generation reaches about the same share of the next.
    ratios = attention_kernel_ratios()
    _, measured_ratio, _ = ratios[(kernel, gpu)]
    two = float(DEFAULT.with_previous_generation_attention(2).attention_scale
                / DEFAULT.attention_scale)
    np.testing.assert_allclose(two, float(DEFAULT.attention_previous_scale) ** 2, rtol=1e-6)
    np.testing.assert_allclose(measured_ratio, two, rtol=0.12)
    with pytest.raises(ValueError, match="generations must be 1 or 2; got 3"):
        DEFAULT.with_previous_generation_attention(3)


def test_llm_foundry_h100_rows_run_the_kernel_their_harness_chose():
    # llmfoundry_h100_attention: the harness ran attn_impl: triton (two generations older than
    # H100's own kernel) except where the >= 128-GPU sweep passed flash (FlashAttention-2, one
    # older) for MPT-1b, -3b, -7b and -70b; the A100 tables are one generation older.
    cases, _ = training_rows(data_dir(), filename="external_checks.csv")
    h100 = [c for c in cases if c.source_key == "ext_mosaicml_h100"]
    assert len(h100) == 70
    flash = {c.run_id for c in h100 if c.attention_kernel == "previous"}
    assert len(flash) == 12 and all(int(c.system.num_chips) >= 128 for c in h100
                                    if c.run_id in flash)
    assert {c.attention_kernel for c in h100 if c.run_id not in flash} == {"two_older"}
    assert not any("_13b_" in r or "_30b_" in r for r in flash)
    triton = next(c for c in h100 if c.run_id not in flash)
    np.testing.assert_allclose(float(triton.calibration(DEFAULT).attention_scale),
                               float(DEFAULT.attention_scale)
                               * float(DEFAULT.attention_previous_scale) ** 2, rtol=1e-6)
    a100, _ = training_rows(data_dir())
    assert {c.attention_kernel for c in a100
            if c.source_key == "mosaicml_llmfoundry_bench"} == {"previous"}
    with pytest.raises(ValueError, match="TrainingCase.attention_kernel must be one of"):
        dataclasses.replace(triton, attention_kernel="flash3")


def test_stored_attention_fields_are_the_least_squares_optimum_of_their_data():
    # The fit re-run is tens of seconds; its optimum is checked instead: the residuals are
    # unbiased and the gradient of the loss along every stored field is ~0 (central
    # differences of the sum of squared log-ratios, relative to the loss).
    rows = attention_rows()
    assert len(rows) == 143
    measured = measured_seconds(rows)

    def loss(cal):
        return float(np.sum(np.log(modelled_seconds(cal, rows) / measured) ** 2))

    base = loss(DEFAULT)
    assert np.sqrt(base / len(rows)) < 0.08  # rms log error
    for name in ATTENTION_FIELDS:
        x = float(getattr(DEFAULT, name))
        step = 0.02 * x
        up, down = (loss(DEFAULT.replace(**{name: x + d})) for d in (step, -step))
        # Rounded to 4 digits: a 2% move of any field raises the loss (a minimum).
        assert up >= base * (1 - 1e-3) and down >= base * (1 - 1e-3), name


def test_previous_generation_scale_reproduces_its_fit():
    np.testing.assert_allclose(fit_previous_generation_scale(),
                               float(DEFAULT.attention_previous_scale), rtol=2e-3)


def test_attention_gradients_match_central_differences_in_float64():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        chip = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64)
                            if isinstance(x, jax.Array) else x, H100)
        for _ in range(3):
            seq, hd = float(rng.uniform(300, 20000)), float(rng.uniform(40, 250))

            def t(s, d, backward=False):
                op = attention_backward if backward else attention
                return op(chip, 2.0, 16.0, 4.0, s, s, d, causal=True).time

            for backward in (False, True):
                g = jax.grad(t, argnums=(0, 1))(jnp.float64(seq), jnp.float64(hd), backward)
                fd_s = central_difference(
                    lambda v, d=hd, b=backward: float(t(v, d, b)), seq)
                fd_d = central_difference(
                    lambda v, s=seq, b=backward: float(t(s, v, b)), hd)
                np.testing.assert_allclose(float(g[0]), fd_s, rtol=1e-5)
                np.testing.assert_allclose(float(g[1]), fd_d, rtol=1e-5)


# ----- ZeRO-3 / FSDP communication --------------------------------------------------------------

def _z3(compute, recompute=0.0, regather=0.0, hierarchical=1.0, overlap=1.0, dp=64.0,
        calibration=DEFAULT):
    system = SYSTEMS["DGX-A100"].with_num_chips(64)
    plan = TrainingPlan(dp=dp, global_batch=dp, zero_stage=3.0, recompute=2.0 * recompute,
                        dp_overlap=overlap, dp_hierarchical=hierarchical,
                        zero3_regather=regather)
    layer = 1e9  # parameters of one layer
    # All dense weights linear: a BF16 plan gathers them at 2 bytes either way.
    params = StageParams(*(jnp.asarray(x) for x in (10 * layer, 0.0, layer, 0.0, 10 * layer)))
    return data_parallel_cost(plan, system, params, compute, 2 * compute,
                              compute * recompute, 10.0, calibration)


def test_zero3_prefetch_hides_what_compute_covers_and_nothing_more():
    slow = _z3(compute=1e-6)  # no compute to hide behind: everything shows
    np.testing.assert_allclose(float(slow.exposed), float(slow.total), rtol=1e-2)
    # Compute >> communication: one gather + one of each pass shows, with hidden communication
    # free (overlap_slowdown 0)...
    free = DEFAULT.replace(overlap_slowdown=0.0)
    fast = _z3(compute=10.0, calibration=free)
    per_layer = float(fast.total) / 10.0 / 3.0  # gather ~ reduce-scatter time per layer
    assert float(fast.exposed) < 4.0 * per_layer
    # ... and the compute beside the rest slowed by s / (1 + s) of it at the default.
    s = float(DEFAULT.overlap_slowdown)
    np.testing.assert_allclose(float(_z3(compute=10.0).exposed), float(fast.exposed) + s / (
        1 + s) * (float(fast.total) - float(fast.exposed)), rtol=1e-5)
    assert float(_z3(compute=10.0, overlap=0.0).exposed) == pytest.approx(float(fast.total))
    # DeepSpeed's gather for the recomputed forward adds one gather per layer per micro-batch.
    re = _z3(compute=1e-6, recompute=1.0, regather=1.0)
    np.testing.assert_allclose(float(re.total), float(slow.total) * 4.0 / 3.0, rtol=1e-6)
    # A flat ring across 8 nodes moves every chip's whole share over its scale-out port:
    # about 8x the scale-out time of the hierarchical rings (8 GPUs per node).
    flat = _z3(compute=1e-6, hierarchical=0.0)
    assert 3.0 < float(flat.total) / float(slow.total) < 10.0


# ----- every row is modelled or skipped with a reason ------------------------------------------

@pytest.fixture(scope="module")
def rows_and_skips():
    return training_rows(data_dir())


def test_every_training_row_is_a_case_or_a_reason(rows_and_skips):
    cases, skipped = rows_and_skips
    with open(data_dir() / "training_runs.csv", newline="") as f:
        ids = [r["run_id"] for r in csv.DictReader(f)]
    assert sorted(c.run_id for c in cases) + sorted(s.run_id for s in skipped) != []
    assert sorted([c.run_id for c in cases] + [s.run_id for s in skipped]) == sorted(ids)
    reasons = collections.Counter(s.reason for s in skipped)
    # NeMo 24.07 FP8, Megatron-Bridge FP8 / MXFP8 and NeMo's FP8 long-sequence tables.
    assert reasons[LOW_PRECISION] == 49
    assert reasons[MOE_MODELZOO] == 13
    assert len(cases) == 199
    # Every measured figure became a positive time.
    assert all(c.measured > 0 and c.metric in ("step_time", "layer_time") for c in cases)


@pytest.fixture(scope="module")
def moe_predictions():
    """The 13 ModelZoo cases and the EP 32 row as a plain all-to-all, predicted in one call:
    (cases, {run_id: error}, plain all-to-all EP 32 error, {run_id: report})."""
    from dse.calibration import moe_cases, predict_moe

    cases = moe_cases(data_dir())
    ep32 = next(c for c in cases if c.run_id == "zoo_qwen3_235b_h100_tp2ep32pp8")
    every_copy = dataclasses.replace(ep32, plan=ep32.plan.replace(ep_hierarchical=0.0))
    reports = predict_moe([*cases, every_copy])
    errors = {c.run_id: float(r.step_time) / c.measured - 1.0
              for c, r in zip(cases, reports, strict=False)}
    flat_error = float(reports[-1].step_time) / ep32.measured - 1.0
    return cases, errors, flat_error, {c.run_id: r for c, r in zip(cases, reports, strict=False)}


def test_moe_rows_are_cases_of_their_own_and_deepep_crosses_infiniband_once_per_node(
        moe_predictions):
    # The 13 skipped ModelZoo rows are validate.py's MoE table (dse.calibration.moe_cases).
    cases, errors, flat_error, reports = moe_predictions
    assert len(cases) == 13 and all(c.measured > 0 for c in cases)
    # Every row ran DeepEP but one (its notes: "all-to-all dispatcher (not DeepEP)"), every
    # row expert TP 1 and the embedding and the loss counted in the pipeline split (the
    # ModelZoo's Qwen3-235B-A22B config): 94 + 2 units over PP 8 x VP 4 and PP 32 x VP 3.
    assert sum(float(c.plan.ep_hierarchical) for c in cases) == 12
    assert all(float(c.plan.etp) == 1.0 for c in cases)
    assert all(float(c.plan.account_embedding_loss) == 1.0 for c in cases)
    # Every run fits its 80 GB, the long-context ones (CP 1-8, 16K-128K tokens) because they
    # recompute each MoE block (`--recompute-modules layernorm moe`): 91.5 GiB without.
    long_context = [c for c in cases if "_seq" in c.run_id]
    assert len(long_context) == 8
    assert all(float(c.plan.recompute_moe) == 1.0 for c in long_context)
    assert all(bool(r.fits) for r in reports.values())
    # The model routes evenly: the force-balanced long-context rows are its like for like,
    # +6.7% to +14.5% (+6.8% to +13.1% before the collectives were pipelined, 2026-12-03: the
    # NVLink constants fitted to both generations price H100's collectives slow, see
    # tests/test_collectives.py); their dropless twins ran 9-25% slower.
    balanced = [e for run_id, e in errors.items() if run_id.endswith("_forcedbalance")]
    assert len(balanced) == 4 and 0.0 < min(balanced) and max(balanced) <= 0.16, balanced
    # EP 32 over four nodes, 19.7 s measured: far too slow when every routed copy crosses
    # InfiniBand, +10.8% with DeepEP's one copy per node (+8.4% before the pipelining).
    error = errors["zoo_qwen3_235b_h100_tp2ep32pp8"]
    assert 0.0 < error <= 0.12 and error < 0.5 * flat_error
    # The same layout with Megatron-Core's combined 1F1B (all-to-alls behind the other
    # micro-batch's compute), 17.6 s measured: faster than without, in the model too.
    overlap = [c for c in cases if float(c.plan.ep_overlap) == 1.0]
    assert [c.run_id for c in overlap] == ["zoo_qwen3_235b_h100_tp2ep32pp8_a2aoverlap"]
    assert errors[overlap[0].run_id] < error


def test_combined_1f1b_row_within_ten_percent(moe_predictions):
    # -9.1% (-11.5% before the collectives were pipelined: its all-to-alls were too cheap to
    # leave any exposed); the model still hides more of them than the run did.
    _, errors, _, _ = moe_predictions
    assert abs(errors["zoo_qwen3_235b_h100_tp2ep32pp8_a2aoverlap"]) <= 0.10


@pytest.mark.xfail(strict=True, reason="Llama 3 405B's 8K runs (no activation checkpointing) "
                   "need 84.8 GiB of 80 on the fullest stage in the model (the second: 8 layers, "
                   "15 micro-batches in flight, against the first's 7 and 16) at interleave 4, so "
                   "only interleave 1 fits: 22% and 50% slow (with the first stage's 79.3 GiB, "
                   "-4.5% and -0.8%)")
def test_llama3_405b_runs_with_the_papers_pipeline_split():
    # Dubey et al. 2024, Table 4: Llama 3 405B at 8K tokens on 8,192 and 16,384 H100s, TP 8 x
    # PP 16, the first and last stages one layer short (Sec. 3.3.2). An external check (no
    # fit reads it).
    cases, _ = training_rows(data_dir(), filename="external_checks.csv")
    short = [c for c in cases if c.source_key == "ext_llama3" and "_cp" not in c.run_id]
    assert len(short) == 2
    rows = TrainingRows(short)  # each row's fastest feasible plan, then one vmapped step
    assert all(float(p.account_embedding_loss) == 1.0 for p in rows.plans)
    errors = np.asarray(rows(DEFAULT)) / rows.measured - 1.0
    assert np.all(np.abs(errors) <= 0.06), errors


def test_external_checks_cannot_be_fitted():
    rows = object.__new__(TrainingRows)  # what training_measurements reads first: the sources
    rows.sources = ["mosaicml_llmfoundry_bench", "ext_torchtitan"]
    with pytest.raises(ValueError, match="external checks .*ext_torchtitan"):
        training_measurements(rows)
    cases, skipped = training_rows(data_dir(), filename="external_checks.csv")
    assert cases and all(c.source_key.startswith("ext_") for c in cases)
    assert all(isinstance(s, SkippedRow) and s.reason for s in skipped)


# ----- prediction intervals ---------------------------------------------------------------------

def test_source_spread_adds_between_and_within_source_variance():
    rng = np.random.default_rng(0)
    offsets = rng.normal(0.0, 0.1, 400)  # between-source std 0.1
    group = np.repeat(np.arange(400), 10)
    r = offsets[group] + rng.normal(0.0, 0.05, group.size)  # within-source std 0.05
    np.testing.assert_allclose(source_spread(r, group), np.hypot(0.1, 0.05), rtol=0.08)


def test_unseen_source_intervals_cover_their_level_with_unbalanced_sources():
    # The training data's shape: ten sources of 1 to 139 rows (validate.py's folds). Rows of a
    # new source are covered at the nominal 90% when the between term is the unweighted-means
    # estimator and t has Satterthwaite's dof; the variance of the raw source means (one-row
    # sources counting their scatter twice) with n_sources - 1 dof covered 94-96% here.
    rng = np.random.default_rng(3)
    sizes = np.array([10, 12, 1, 8, 2, 5, 9, 12, 139, 1])
    group = np.repeat(np.arange(sizes.size), sizes)
    from scipy.stats import t as t_dist

    for between, within in ((0.07, 0.08), (0.02, 0.1), (0.1, 0.02)):
        covered = []
        for _ in range(1000):
            r = rng.normal(0.0, between, sizes.size)[group] + rng.normal(0.0, within, group.size)
            new = rng.normal(0.0, between) + rng.normal(0.0, within, 20)
            # prediction_interval's quantile, in numpy (3,000 intervals in about 3 s).
            half = t_dist.ppf(0.95, spread_dof(r, group)) * source_spread(r, group)
            covered.append(np.mean(np.abs(new) <= half))
        assert np.mean(covered) == pytest.approx(0.9, abs=0.015), (between, within)


def test_spread_dof_runs_from_the_sources_to_the_rows():
    rng = np.random.default_rng(5)
    group = np.repeat(np.arange(8), 25)
    only_between = rng.normal(0.0, 0.1, 8)[group] + rng.normal(0.0, 1e-6, group.size)
    only_within = rng.normal(0.0, 0.1, group.size)
    assert spread_dof(only_between, group) == pytest.approx(7.0, rel=1e-3)
    assert 0.5 * (200 - 8) < spread_dof(only_within, group) <= 200 - 1
    assert spread_dof(only_within[:25], group[:25]) == 1.0  # one source: the widest t
    # Continuous where the between-source estimate crosses zero (it is clipped there).
    r = only_within.copy()
    means = np.array([r[group == g].mean() for g in range(8)])
    inv_n, ms_w = 1.0 / 25.0, np.var(r - means[group], ddof=0) * 200 / (200 - 8)
    for target in (0.999, 1.001):  # MS_means just below and above mean(1 / n_i) ms_w
        shifted = r - means[group] + (means - means.mean())[group] * np.sqrt(
            target * inv_n * ms_w / np.var(means, ddof=1))
        dofs = spread_dof(shifted, group)
        assert dofs == pytest.approx(1.0 / (inv_n**2 / 7 + (1 - inv_n) ** 2 / 192), rel=0.02)


def test_interval_covers_its_level_on_log_normal_errors_and_prints():
    rng = np.random.default_rng(1)
    truth = np.exp(rng.normal(0.0, 0.1, 20000))
    iv = prediction_interval(np.ones_like(truth), 0.1, level=0.9)
    np.testing.assert_allclose(float(np.mean(np.asarray(iv.contains(truth)))), 0.9, atol=0.01)
    one = prediction_interval(4.1, 0.05, level=0.9, dof=9)
    assert one.format() == "4.1 s +- 0.39 s (90%)"
    with pytest.raises(ValueError, match="level must be in"):
        prediction_interval(1.0, 0.1, level=1.5)
