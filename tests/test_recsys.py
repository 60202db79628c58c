"""Recommendation models (DLRM family): presets against their sources, the training step's
physics (capacity, bandwidth, cache, sharding, communication), transforms, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dse.hardware import SYSTEMS, Reason
from dse.models import (
    DLRM,
    DLRMS,
    RecPlan,
    all_to_all,
    rec_inference,
    rec_train_step,
)
from dse.models._recsys import (
    _KAGGLE_ROWS,
    _TERABYTE_ROWS,
    PUBLISHED_EMBEDDING_BYTES_FP32,
    PUBLISHED_TOP_INPUT,
)

H100 = SYSTEMS["DGX-H100"]
DCN = DLRMS["dlrm-dcnv2"]


def small_dlrm(**changes):
    base = dict(table_rows=[1e6, 2e5, 5e4, 100.0], lookups=[4.0, 2.0, 1.0, 1.0],
                embedding_dim=32.0, bottom_mlp=(13, 64, 32), top_mlp=(64, 1),
                interaction="dcn", cross_layers=2, cross_rank=16.0)
    return DLRM(**(base | changes))


# ----- presets -------------------------------------------------------------------------------
def test_dcnv2_tables_match_the_published_size():
    # torchrec_dlrm README: 104.54 GB of fp32 tables (204,184,588 rows x 128 x 4 B).
    for name, size in PUBLISHED_EMBEDDING_BYTES_FP32.items():
        assert abs(4.0 * float(DLRMS[name].embedding_params) / size - 1.0) < 0.01
    assert float(jnp.sum(DCN.lookups)) == 214.0  # the multi-hot sizes' sum


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOP_INPUT))
def test_interaction_widths_match_the_dlrm_code(name):
    # The DLRM code's top-MLP input widths (tools/visualize.py ln_top: 367, 415, 479).
    assert float(DLRMS[name].interaction_width) == PUBLISHED_TOP_INPUT[name]


@pytest.mark.parametrize("name,rows,dim,layers", [
    ("dlrm-criteo-kaggle", _KAGGLE_ROWS, 16, [13, 512, 256, 64, 16, 367, 512, 256, 1]),
    ("dlrm-criteo-terabyte", _TERABYTE_ROWS, 64, [13, 512, 256, 64, 415, 512, 512, 256, 1]),
])
def test_criteo_presets_count_parameters_as_their_sources(name, rows, dim, layers):
    # Parameters counted independently from the source's lists (tables, then the MLP layers as
    # the DLRM code's ln_bot / ln_top, with biases); the bottom MLP's last width feeds nothing
    # but the interaction, so the two MLPs are counted as separate chains.
    bottom, top = layers[:layers.index(dim) + 1], layers[layers.index(dim) + 1:]
    mlp = sum(a * b + b for chain in (bottom, top)
              for a, b in zip(chain[:-1], chain[1:], strict=True))
    expected = sum(rows) * dim + mlp
    assert abs(float(DLRMS[name].params) / expected - 1.0) < 0.01
    if name == "dlrm-criteo-kaggle":
        assert sum(rows) == 33762577  # the Criteo Kaggle vocabulary as the DLRM loaders state


# ----- physics -------------------------------------------------------------------------------
def test_breakdown_sums_to_the_step_and_memory_adds_up():
    r = rec_train_step(DCN, RecPlan(global_batch=55296, sharding="column"), H100)
    np.testing.assert_allclose(float(sum(r.breakdown.values())), float(r.step_time),
                               rtol=1e-6)
    np.testing.assert_allclose(float(r.memory_per_chip),
                               float(r.embedding_bytes_per_chip + r.dense_bytes_per_chip),
                               rtol=1e-6)
    # Column-wise: an eighth of the fp32 tables plus the same again of Adagrad state.
    np.testing.assert_allclose(float(r.embedding_bytes_per_chip), 2 * 104.5425e9 / 8,
                               rtol=1e-4)
    assert bool(r.fits) and float(r.samples_per_s) > 0.0


def test_tables_that_do_not_fit_are_flagged_with_the_shortfall():
    one = H100.with_num_chips(1)
    r = rec_train_step(DCN, RecPlan(global_batch=4096), one)
    assert not bool(r.fits)
    assert int(r.reason) & Reason.MEMORY
    np.testing.assert_allclose(float(r.memory_shortfall),
                               float(r.memory_per_chip - r.memory_capacity), rtol=1e-6)
    # Table-wise sharding cannot split a 40M-row table: 20.5 GB on one chip at least.
    t = rec_train_step(DCN, RecPlan(global_batch=4096 * 64), H100.with_num_chips(64))
    assert float(t.embedding_bytes_per_chip) >= 2 * 40e6 * 128 * 4


def test_embedding_time_follows_bandwidth_cache_and_sharding():
    plan = RecPlan(global_batch=65536, sharding="column")
    base = rec_train_step(DCN, plan, H100)
    # Lookups are HBM-bound: a cache hit rate of h removes that share of the row traffic.
    cached = rec_train_step(DCN, plan.replace(cache_hit_rate=0.5), H100)
    np.testing.assert_allclose(float(cached.embedding_hbm_bytes),
                               0.5 * float(base.embedding_hbm_bytes), rtol=1e-6)
    assert float(cached.embedding_time) < float(base.embedding_time)
    fast = H100.replace(chip=H100.chip.replace(hbm_bandwidth=2.0 * H100.chip.hbm_bandwidth))
    assert float(rec_train_step(DCN, plan, fast).embedding_time) < float(base.embedding_time)
    # Table-wise puts the 100-hot table's lookups on one chip: 100 rows per sample on the
    # busiest chip instead of 214 / 8 (the column shards are D / 8 wide, so the bytes compare).
    table = rec_train_step(DCN, plan.replace(sharding="table"), H100)
    np.testing.assert_allclose(float(table.embedding_hbm_bytes),
                               100.0 / (214.0 / 8.0) * float(base.embedding_hbm_bytes),
                               rtol=1e-5)
    assert float(table.embedding_time) > 3.0 * float(base.embedding_time)
    # Row-wise exchanges partial sums of every table for the global batch: more traffic.
    row = rec_train_step(DCN, plan.replace(sharding="row"), H100)
    assert float(row.embedding_comm_time) > 2.0 * float(base.embedding_comm_time)


def test_pooled_exchange_is_the_shared_all_to_all():
    plan = RecPlan(global_batch=65536, sharding="column", dense_bytes=2.0, index_bytes=8.0)
    system = H100.with_num_chips(64)
    r = rec_train_step(DCN, plan, system)
    b = 65536 / 64
    ids = all_to_all(system, b * 214 * 8.0, 64).time
    pooled = all_to_all(system, b * 26 * 128 * 2.0, 64).time
    np.testing.assert_allclose(float(r.embedding_comm_time), float(ids + 2.0 * pooled),
                               rtol=1e-5)


def test_inference_is_the_forward_alone():
    plan = RecPlan(global_batch=55296, sharding="column")
    t = rec_train_step(DCN, plan, H100)
    i = rec_inference(DCN, plan, H100)
    assert float(i.step_time) < 0.5 * float(t.step_time)
    assert float(i.dp_comm_time) == 0.0 and float(i.optimizer_time) == 0.0
    assert float(i.memory_per_chip) < float(t.memory_per_chip)


@pytest.mark.xfail(strict=True, reason=(
    "10.4% at the median (7.1% before the collectives were pipelined, 2026-12-03): the link "
    "efficiency the pipelined model re-derives (0.772, was 0.696) speeds up the large pooled "
    "all-to-alls and the shared kernel fraction rose (0.806, was 0.799); split-K for DLRM's "
    "narrow MLP GEMMs is not modelled"))
def test_mlperf_rows_within_ten_percent():
    # Published MLPerf Training v4.0 DLRM-DCNv2 throughput (data/recsys_runs.csv): the median
    # |error| of the step time over that source's modelled rows (no constant fitted to them).
    # The margin was always thin: 10.5% at the former kernel fraction 0.77.
    from dse.calibration import predict_recsys, recsys_cases

    cases, _ = recsys_cases()
    mlperf = [c for c in cases if c.source_key == "mlperf_training_v40_dlrm_dcnv2"]
    err = np.array([c.measured for c in mlperf]) / predict_recsys(mlperf) - 1.0
    assert len(mlperf) == 6 and np.median(np.abs(err)) <= 0.10


@pytest.mark.xfail(strict=True, reason="TorchRec's 131k-batch DCN row is 22.4% slow in the "
                   "model (the 16k-batch row 15.4%)")
def test_torchrec_dcn_rows_within_twenty_percent():
    # TorchRec's DCNv2 rows (torchrec_dlrm README, 8 x A100): their MLPs run in IEEE fp32
    # (allow_tf32 off), which bounds the step; within 20% of the published samples/s. (Its
    # dot-interaction rows stay far too fast in the model: an overhead it does not have.)
    from dse.calibration import predict_recsys, recsys_cases

    cases, _ = recsys_cases()
    dcn = [c for c in cases if c.source_key == "torchrec_dlrm_readme"
           and c.model.interaction == "dcn"]
    err = np.array([c.measured for c in dcn]) / predict_recsys(dcn) - 1.0
    assert len(dcn) == 2 and np.all(np.abs(err) <= 0.20)


# ----- transforms ----------------------------------------------------------------------------
@pytest.mark.parametrize("x64", [False, True])
def test_jit_vmap_grad_finite(x64):
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        model = small_dlrm()
        system = H100.with_num_chips(8)
        plan = RecPlan(global_batch=8192.0, sharding="column", cache_hit_rate=0.3)

        def step(hbm, sram, macs, link, hit):
            chip = system.chip.replace(hbm_bandwidth=hbm, sram_bytes=sram, mac_units=macs,
                                       link_bandwidth=link)
            r = rec_train_step(model, plan.replace(cache_hit_rate=hit),
                               system.replace(chip=chip), smooth=True)
            return r.step_time

        rng = np.random.default_rng(1)
        n = 5
        args = [jnp.asarray(rng.uniform(lo, hi, n), dtype) for lo, hi in
                [(1e12, 8e12), (20e6, 200e6), (1e5, 1e6), (20e9, 100e9), (0.0, 0.9)]]
        times = jax.jit(jax.vmap(step))(*args)
        assert times.dtype == dtype and bool(jnp.all(jnp.isfinite(times)))
        loop = [float(step(*(a[i] for a in args))) for i in range(n)]
        np.testing.assert_allclose(np.asarray(times), loop, rtol=1e-4 if not x64 else 1e-9)
        grads = jax.jit(jax.vmap(jax.grad(step, argnums=(0, 1, 2, 3, 4))))(*args)
        for g in grads:
            assert bool(jnp.all(jnp.isfinite(g)))
        # More HBM bandwidth and a higher hit rate never slow the step.
        assert bool(jnp.all(grads[0] <= 0.0)) and bool(jnp.all(grads[4] <= 0.0))


def test_traced_bad_batch_is_flagged_not_raised():
    system = H100.with_num_chips(8)
    f = jax.jit(lambda b: rec_train_step(small_dlrm(), RecPlan(global_batch=b), system).reason)
    assert int(f(1001.0)) & Reason.BATCH
    assert int(f(1024.0)) == 0


# ----- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("changes,match", [
    (dict(lookups=[1.0, 1.0]), "DLRM.lookups"),
    (dict(table_rows=[0.0, 1.0, 1.0, 1.0]), "DLRM.table_rows"),
    (dict(embedding_dim=16.0), "DLRM.embedding_dim"),
    (dict(interaction="cat"), "DLRM.interaction"),
    (dict(cross_layers=0), "DLRM.cross_layers"),
])
def test_bad_model_fields_name_field_and_range(changes, match):
    with pytest.raises(ValueError, match=match):
        small_dlrm(**changes)


def test_bad_plan_fields_name_field_and_range():
    with pytest.raises(ValueError, match=r"RecPlan.cache_hit_rate must be finite and in \[0, 1\)"):
        RecPlan(global_batch=1024, cache_hit_rate=1.0)
    with pytest.raises(ValueError, match="RecPlan.sharding"):
        RecPlan(global_batch=1024, sharding="diagonal")
    with pytest.raises(ValueError, match="RecPlan.global_batch must be a whole multiple"):
        rec_train_step(small_dlrm(), RecPlan(global_batch=1001), H100)
