"""Transformer shapes: published parameter counts, exact FLOP counts, validation, transforms."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference, data_dir

from dse.models import TRANSFORMERS, Transformer

# Published parameter totals: Llama 3 8B / 70B (Meta's model cards: 8.03B, 70.6B) and 405B
# (Dubey et al. 2024, Table 3), Mixtral 8x7B (model card: 46.7B; Jiang et al. 2024, Sec. 2:
# 47B), GPT-3 (Brown et al. 2020, Table 2.1: 175.0B).
PUBLISHED = {
    "llama3-8b": (8.03e9, 0.005),
    "llama3-70b": (70.6e9, 0.005),
    "llama3-405b": (405e9, 0.01),
    "mixtral-8x7b": (46.7e9, 0.005),
    "gpt3-175b": (175.0e9, 0.005),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    value, tol = PUBLISHED[name]
    np.testing.assert_allclose(float(TRANSFORMERS[name].params), value, rtol=tol)


def test_mixtral_active_parameters():
    # Jiang et al. 2024, Sec. 2: 13B active parameters per token (12.9B on the model card).
    np.testing.assert_allclose(float(TRANSFORMERS["mixtral-8x7b"].active_params), 12.9e9,
                               rtol=0.01)


def _training_rows():
    with open(data_dir() / "training_runs.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["source_key"] == "megatron_sc21_table1"]


SC21_PRESETS = {"GPT-1.7B": "gpt-1.7b", "GPT-3.6B": "gpt-3.6b", "GPT-7.5B": "gpt-7.5b",
                "GPT-18B": "gpt-18b", "GPT-39B": "gpt-39b", "GPT-76B": "gpt-76b",
                "GPT-145B": "gpt-145b", "GPT-310B": "gpt-310b", "GPT-530B": "gpt-530b",
                "GPT-1T": "gpt-1t"}


def test_sc21_presets_match_csv_shapes_and_sizes():
    rows = _training_rows()
    assert len(rows) == 10
    for row in rows:
        model = TRANSFORMERS[SC21_PRESETS[row["model"]]]
        for field in ("layers", "hidden", "heads", "ffn_hidden", "seq_len", "vocab"):
            assert float(getattr(model, field)) == float(row[field]), (row["model"], field)
        # The table's parameter counts (billions, rounded) from the same shapes.
        np.testing.assert_allclose(float(model.params) / 1e9, float(row["params_b"]),
                                   rtol=0.035)


@pytest.mark.parametrize("name", sorted(SC21_PRESETS.values()))
def test_hardware_flops_equal_megatron_eq3(name):
    # Narayanan et al. 2021 eq. 3: 96 B s l h^2 (1 + s / (6h) + V / (16 l h)) per iteration
    # with full recomputation; per token divide by B s.
    m = TRANSFORMERS[name]
    s, l_, h, v = (float(x) for x in (m.seq_len, m.layers, m.hidden, m.vocab))
    eq3 = 96 * s * l_ * h * h * (1 + s / (6 * h) + v / (16 * l_ * h)) / s
    np.testing.assert_allclose(float(m.hardware_flops_per_token(1.0)), eq3, rtol=1e-6)


def test_model_flops_match_palm_formula():
    # PaLM (Chowdhery et al. 2022, App. B): 6 N + 12 L H Q T training FLOPs per token, with N
    # the weights of every matrix a token passes through (layers + output projection).
    m = TRANSFORMERS["llama3-70b"]
    n = float(m.layers * (m.attention_params_per_layer + m.expert_params_per_layer)
              + m.vocab * m.hidden)
    palm = 6 * n + 12 * float(m.layers * m.hidden * m.seq_len)
    np.testing.assert_allclose(float(m.flops_per_token(training=True)), palm, rtol=1e-6)
    np.testing.assert_allclose(float(m.flops_per_token(training=False)), palm / 3, rtol=1e-6)


def test_gqa_and_moe_counts():
    dense = Transformer(layers=2, hidden=1024, heads=16, kv_heads=16, ffn_hidden=4096,
                        vocab=1000, seq_len=128)
    gqa = dense.replace(kv_heads=4.0)
    # K and V shrink from h x h to h x h/4 each.
    np.testing.assert_allclose(float(dense.attention_params_per_layer
                                     - gqa.attention_params_per_layer),
                               2 * 1024 * (1024 - 256))
    moe = dense.replace(experts=8.0, top_k=2.0)
    per_expert = float(dense.expert_params_per_layer)
    np.testing.assert_allclose(float(moe.params - dense.params),
                               2 * (7 * per_expert + 1024 * 8))
    np.testing.assert_allclose(float(moe.active_params - dense.active_params),
                               2 * (per_expert + 1024 * 8))


@pytest.mark.parametrize("field,value", [("hidden", -1.0), ("layers", 0.0), ("heads", 0.5),
                                         ("seq_len", float("nan"))])
def test_bad_shape_raises_naming_field(field, value):
    base = dict(layers=2, hidden=64, heads=4, kv_heads=4, ffn_hidden=256, vocab=100,
                seq_len=16)
    with pytest.raises(ValueError, match=f"Transformer.{field}"):
        Transformer(**(base | {field: value}))


def test_relations_checked():
    base = dict(layers=2, hidden=64, heads=4, ffn_hidden=256, vocab=100, seq_len=16)
    with pytest.raises(ValueError, match="Transformer.kv_heads"):
        Transformer(kv_heads=8, **base)
    with pytest.raises(ValueError, match="Transformer.top_k"):
        Transformer(kv_heads=4, experts=2, top_k=4, **base)


def test_vmap_jit_grad_over_shapes():
    base = TRANSFORMERS["llama3-8b"]
    hidden = jnp.array([2048.0, 4096.0, 8192.0])
    batched = jax.vmap(lambda h: base.replace(hidden=h).params)(hidden)
    loop = [float(base.replace(hidden=float(h)).params) for h in hidden]
    np.testing.assert_allclose(np.asarray(batched), loop, rtol=1e-6)
    f = jax.jit(lambda m: m.flops_per_token())
    np.testing.assert_allclose(float(f(base)), float(base.flops_per_token()), rtol=1e-6)
    with jax.enable_x64(True):
        m64 = Transformer(layers=32.0, hidden=4096.0, heads=32.0, kv_heads=8.0,
                          ffn_hidden=14336.0, vocab=128256.0, seq_len=8192.0, gated_mlp=True)

        def g(h):
            return m64.replace(hidden=h).flops_per_token()

        ad = float(jax.grad(g)(jnp.float64(4096.0)))
        fd = central_difference(lambda h: float(g(jnp.float64(h))), 4096.0)
        np.testing.assert_allclose(ad, fd, rtol=1e-5)


def test_head_size_for_models_whose_heads_do_not_tile_the_width():
    # PaLM 540B (Chowdhery et al. 2022, Table 1: 118 layers, d_model 18432, 48 heads of 256,
    # multi-query, SwiGLU of 4 d_model, 256k vocabulary, shared embeddings): 540.35B parameters.
    palm = Transformer(layers=118, hidden=18432, heads=48, kv_heads=1, ffn_hidden=4 * 18432,
                       vocab=256000, seq_len=2048, gated_mlp=True, head_size=256)
    np.testing.assert_allclose(float(palm.params), 540.35e9, rtol=1e-3)
    assert float(palm.head_dim) == 256.0
    assert float(palm.replace(head_size=0.0).head_dim) == 384.0
    with pytest.raises(ValueError, match="Transformer.head_size"):
        palm.replace(head_size=-1.0)


def test_presets_without_duplicates_and_aliases():
    # Two names in common use for one shape: the alias is the same object, not a copy.
    for alias, name in TRANSFORMERS.aliases.items():
        assert TRANSFORMERS[alias] is TRANSFORMERS[name], alias
        assert alias in TRANSFORMERS and alias not in list(TRANSFORMERS)
    assert TRANSFORMERS["megatron-530b"] is TRANSFORMERS["gpt-530b"]
    assert TRANSFORMERS["megatron-1t"] is TRANSFORMERS["gpt-1t"]
    # No two listed presets share a shape: GPT-3 (Brown et al.) and Megatron's 175B run differ in
    # their vocabulary (50257 vs 51200 padded), and nothing else.
    def shape(model):
        return tuple(float(x) for x in jax.tree.leaves(model))

    shapes = {}
    for name in TRANSFORMERS:
        key = shape(TRANSFORMERS[name])
        assert key not in shapes, (name, shapes.get(key))
        shapes[key] = name
    gpt3, megatron = TRANSFORMERS["gpt3-175b"], TRANSFORMERS["gpt-175b"]
    assert (float(gpt3.vocab), float(megatron.vocab)) == (50257.0, 51200.0)
    assert shape(gpt3.replace(vocab=megatron.vocab)) == shape(megatron)
    with pytest.raises(KeyError, match="aliases: megatron-1t -> gpt-1t"):
        TRANSFORMERS["gpt-2t"]
