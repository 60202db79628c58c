"""The workload mix objective: a weighted portfolio evaluated on one system in one call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dse
from dse.hardware import SYSTEMS
from dse.models import TrainingPlan, Transformer

DGX = SYSTEMS["DGX-A100"]


def _model(**changes):
    base = dict(layers=4.0, hidden=512.0, heads=8.0, kv_heads=8.0, ffn_hidden=1024.0,
                vocab=8192.0, seq_len=1024.0, gated_mlp=True, tied_embeddings=False)
    return Transformer(**(base | changes))


def _mix():
    dense = dse.training_workload("dense", 5.0, _model(), TrainingPlan(tp=2, dp=8,
                                                                       global_batch=32), 16)
    moe = dse.training_workload("moe", 3.0, _model(experts=8.0, top_k=2.0, ffn_hidden=256.0),
                                TrainingPlan(dp=16, ep=8, global_batch=32), 16)
    longctx = dse.training_workload("long", 2.0, _model(seq_len=32768.0),
                                    TrainingPlan(tp=2, cp=8, global_batch=1, recompute=2), 16)
    return dse.WorkloadMix([dense, moe, longctx], DGX)


MIX = _mix()


def test_mix_is_one_at_the_reference_and_a_weighted_sum_elsewhere():
    mix = jax.jit(MIX)  # one compile for both systems; op by op each call takes seconds
    at_ref = mix(DGX)
    np.testing.assert_allclose(float(at_ref["mix_time"]), 1.0, rtol=1e-5)
    assert MIX.weights == pytest.approx({"dense": 0.5, "moe": 0.3, "long": 0.2})
    faster = DGX.replace(chip=DGX.chip.replace(hbm_bandwidth=2.0 * DGX.chip.hbm_bandwidth),
                         scaleout_bandwidth=2.0 * DGX.scaleout_bandwidth)
    out = mix(faster)
    parts = sum(MIX.weights[n] * float(out[f"relative_{n}"]) for n in MIX.weights)
    np.testing.assert_allclose(float(out["mix_time"]), parts, rtol=1e-6)
    assert float(out["mix_time"]) < 1.0
    for n in MIX.weights:
        assert float(out[f"relative_{n}"]) <= 1.0 + 1e-6


def test_bad_workloads_are_refused():
    with pytest.raises(ValueError, match="weight"):
        dse.Workload("x", -1.0, lambda s: (1.0, True))
    w = dse.Workload("x", 1.0, lambda s: (jnp.asarray(1.0), True))
    with pytest.raises(ValueError, match="unique"):
        dse.WorkloadMix([w, w], DGX)
    with pytest.raises(ValueError, match="at least one"):
        dse.WorkloadMix([], DGX)
    # A plan that breaks a rule is named when the mix evaluates its reference (the compiled
    # evaluation only flags it; the workload is then run op by op, which raises).
    bad = dse.training_workload("bad", 1.0, _model(), TrainingPlan(tp=3, dp=4, global_batch=8),
                                12)
    with pytest.raises(ValueError, match=r"TrainingPlan\.tp must be a divisor"):
        dse.WorkloadMix([bad], DGX)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_mix_jits_vmaps_and_differentiates(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        bw = jnp.asarray([0.5, 1.0, 3.0], dtype) * float(DGX.chip.hbm_bandwidth)

        def at(b):
            return MIX(DGX.replace(chip=DGX.chip.replace(hbm_bandwidth=b)))["mix_time"]

        # Values and gradients from one jitted program: one compilation of the mix, not two.
        times, grads = jax.jit(jax.vmap(jax.value_and_grad(at)))(bw)
        assert times.dtype == dtype and np.all(np.isfinite(times))
        assert float(times[0]) > float(times[1]) > float(times[2])  # more bandwidth, faster
        assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads) < 0.0)


def test_mix_drives_a_sweep():
    space = dse.Space(DGX, [dse.Param.from_field(DGX, "hbm_bandwidth", low=1e12, high=8e12),
                            dse.Param.from_field(DGX, "sram_bytes", low=16e6, high=256e6)])
    result = dse.sweep(MIX, space, 16, chunk_size=16, progress=False,
                       constraints={"fits": (">=", 1.0)})
    assert len(result) == 16
    mix = np.asarray(result["mix_time"])
    assert np.all(np.isfinite(mix)) and mix.min() < mix.max()


def test_serving_and_recommendation_workloads_join_a_mix():
    from dse.models import DLRM, InferencePlan, RecPlan

    dlrm = DLRM(table_rows=[1e6, 1e5, 100.0], lookups=[2.0, 1.0, 1.0], embedding_dim=32.0,
                bottom_mlp=(13, 64, 32), top_mlp=(64, 1))
    mix = dse.WorkloadMix([
        dse.serving_workload("serve", 3.0, _model(experts=8.0, top_k=2.0, ffn_hidden=256.0),
                             InferencePlan(tp=2), 8, batch=16.0, input_len=256.0,
                             output_len=128.0),
        dse.recsys_workload("dlrm", 2.0, dlrm, RecPlan(global_batch=4096, sharding="row"), 8),
    ], DGX)

    def mix_time(b, system):
        out = mix(system.replace(chip=system.chip.replace(hbm_bandwidth=b)))
        return out["mix_time"], out

    # The metrics ride as aux of the gradient's program: one compilation serves both systems
    # (op by op, each evaluation of the mix took seconds).
    evaluate = jax.jit(jax.value_and_grad(mix_time, has_aux=True))
    (_, at_ref), grad = evaluate(DGX.chip.hbm_bandwidth, DGX)
    np.testing.assert_allclose(float(at_ref["mix_time"]), 1.0, rtol=1e-5)
    assert float(at_ref["fits"]) == 1.0
    # The lookups lean on HBM bandwidth, serving's decode too: more of it, a faster fleet.
    assert np.isfinite(float(grad)) and float(grad) < 0.0
    # Tables that do not fit one chip's HBM make the mix infeasible, not an answer.
    tiny = DGX.replace(chip=DGX.chip.replace(hbm_bytes=1e7))  # 10 MB: under the 35 MB a chip holds
    assert float(evaluate(tiny.chip.hbm_bandwidth, tiny)[0][1]["fits"]) == 0.0
