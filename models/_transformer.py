"""`Transformer`: the shape of a decoder-only LLM (dense or MoE), its parameters and FLOPs.

Shapes are continuous leaves so a batch of models vmaps and a FLOP count differentiates; the
presets are published shapes, each with its source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dse.hardware._once import once_per_evaluation
from dse.hardware._validate import PresetMapping, as_float_array, check_range


def _safe_ratio(num, den):
    return num / jnp.where(den > 0.0, den, 1.0)


# Shapes are continuous (a FLOP count differentiates in them) but bounded: at most 2^24, where
# float32 stops holding whole numbers exactly; the largest published widths, vocabularies and
# contexts are below 2^21. (lower, lower inclusive, upper); head_size 0 means hidden / heads,
# and 0 is "none" for the optional MoE / MLA / window fields.
_LIMIT = 2.0**24
_COUNT = (1.0, True, _LIMIT)
_OPTIONAL = (0.0, True, _LIMIT)
TRANSFORMER_BOUNDS: dict[str, tuple[float, bool, float]] = {
    "layers": _COUNT,
    "hidden": (0.0, False, _LIMIT),
    "heads": _COUNT,
    "kv_heads": _COUNT,
    "ffn_hidden": (0.0, False, _LIMIT),
    "vocab": _COUNT,
    "seq_len": _COUNT,
    "experts": _COUNT,
    "top_k": _COUNT,
    "head_size": _OPTIONAL,
    "shared_experts": _OPTIONAL,
    "dense_layers": _OPTIONAL,
    "dense_ffn_hidden": _OPTIONAL,
    # Busiest expert's load / the mean: at least 1, at most all tokens on one expert.
    "expert_imbalance": _COUNT,
    "capacity_factor": _OPTIONAL,
    "q_lora_rank": _OPTIONAL,
    "kv_lora_rank": _OPTIONAL,
    "rope_head_dim": _OPTIONAL,
    "v_head_size": _OPTIONAL,
    "attention_window": _OPTIONAL,
    "window_layer_share": (0.0, True, 1.0),
}


class Transformer(eqx.Module):
    """A decoder-only transformer: dense or mixture-of-experts, MHA / GQA / MQA.

    **Fields** (counts stored as floats so that shapes vmap and differentiate):

    - `layers`: transformer blocks.
    - `hidden`: model width d_model.
    - `heads`: query heads.
    - `kv_heads`: key/value heads (= `heads` for MHA, 1 for MQA, in between for GQA).
    - `ffn_hidden`: MLP inner width (per expert for MoE).
    - `vocab`: vocabulary size (as padded by the framework where the source says so).
    - `seq_len`: training sequence length, tokens.
    - `experts`: experts per MoE layer (1 = dense MLP).
    - `top_k`: experts each token visits.
    - `head_size`: width of one attention head; 0 (the default) means hidden / heads. Set it
      where a model's heads do not tile the width (PaLM: 48 heads of 256 in d_model 18432).
    - `shared_experts`: always-active experts of width `ffn_hidden` in each MoE layer, beside
      the routed ones (DeepSeek-V2/V3, Llama 4); 0 for none.
    - `dense_layers`: layers of an MoE model whose MLP is dense (DeepSeek-V3's first 3,
      Llama 4 Maverick's every other layer); the other `layers - dense_layers` are MoE layers.
    - `dense_ffn_hidden`: MLP width of those dense layers (0 means `ffn_hidden`).
    - `expert_imbalance`: load of the busiest expert over the mean (1 = balanced routing, as
      Megatron's forced balancing measures; > 1 is a measured or assumed skew). The EP group
      waits for its busiest chip, so expert compute and all-to-all volume scale with it.
    - `capacity_factor`: tokens an expert takes, as a multiple of the balanced share; routed
      tokens beyond it are dropped (GShard / Switch token dropping). 0 = dropless.
    - `q_lora_rank`, `kv_lora_rank`, `rope_head_dim`, `v_head_size`: multi-head latent
      attention (DeepSeek-V2/V3) when `latent_attention`: Q and KV are projected down to these
      ranks and back up per head; `head_size` is then the non-rotary QK width per head,
      `rope_head_dim` the decoupled rotary width, `v_head_size` the value width per head.
    - `latent_attention` (static): the attention is MLA (above) rather than MHA / GQA.
    - `attention_window`: sliding-window (local) attention span, tokens: each query attends to
      at most this many keys (Mistral 7B, Gemma 2); 0 = full causal attention.
    - `window_layer_share`: share of the layers that use the window (1 = all, Mistral; 0.5 =
      Gemma 2's alternating local / global layers).
    - `parallel_block` (static): attention and MLP read the same normalized input and their
      outputs are summed (GPT-J, PaLM Sec. 2): one norm, and under TP one all-reduce per
      layer forward (and one backward) instead of two.
    - `causal` (static): causal (decoder) attention; False for an encoder (ViT, BERT) or a
      diffusion transformer, whose every token attends to every token.
    - `adaln` (static): adaptive layer-norm conditioning (DiT's adaLN-Zero, Peebles & Xie 2023,
      facebookresearch/DiT models.py: a Linear(hidden, 6 hidden) on the conditioning vector in
      every block, run once per sequence, not per token).
    - `gated_mlp` (static): SwiGLU-style MLP with three matrices (True) or GELU MLP with two.
    - `tied_embeddings` (static): input embedding and output projection share one matrix.
    - `name` (static): label.
    """

    layers: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    hidden: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    heads: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    kv_heads: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    ffn_hidden: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    vocab: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    seq_len: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    experts: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    top_k: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    head_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    shared_experts: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    dense_layers: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    dense_ffn_hidden: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    expert_imbalance: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    capacity_factor: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    q_lora_rank: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    kv_lora_rank: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    rope_head_dim: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    v_head_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    attention_window: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    window_layer_share: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                           default=1.0)
    latent_attention: bool = eqx.field(static=True, default=False)
    parallel_block: bool = eqx.field(static=True, default=False)
    causal: bool = eqx.field(static=True, default=True)
    adaln: bool = eqx.field(static=True, default=False)
    gated_mlp: bool = eqx.field(static=True, default=False)
    tied_embeddings: bool = eqx.field(static=True, default=True)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        for field, (lo, lo_inclusive, hi) in TRANSFORMER_BOUNDS.items():
            check_range("Transformer", field, getattr(self, field), lower=lo, upper=hi,
                        lower_inclusive=lo_inclusive)
        # Relations between fields: only on concrete values (tracers are left alone).
        for small, big in (("kv_heads", "heads"), ("top_k", "experts"),
                           ("dense_layers", "layers")):
            s, b = getattr(self, small), getattr(self, big)
            if isinstance(s, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
                continue
            if bool(np.any(np.asarray(s) > np.asarray(b))):
                raise ValueError(
                    f"Transformer.{small} must be <= Transformer.{big} ({b}); got {s}")

    # ----- shapes -------------------------------------------------------------------------
    @property
    @once_per_evaluation
    def head_dim(self) -> Float[Array, "*batch"]:
        """Width of one attention head: `head_size`, or hidden / heads when that is 0."""
        given = self.head_size > 0.0
        return jnp.where(given, self.head_size, self.hidden / self.heads)

    @property
    @once_per_evaluation
    def q_dim(self) -> Float[Array, "*batch"]:
        """Width of Q (and of the attention output) across all heads, heads * head_dim."""
        return self.heads * self.head_dim

    @property
    @once_per_evaluation
    def kv_dim(self) -> Float[Array, "*batch"]:
        """Width of K (or V) across all KV heads, kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    @property
    @once_per_evaluation
    def mlp_matrices(self) -> float:
        """Weight matrices in one MLP (expert): 3 when gated (SwiGLU), else 2."""
        return 3.0 if self.gated_mlp else 2.0

    @property
    @once_per_evaluation
    def qk_head_dim(self) -> Float[Array, "*batch"]:
        """Width of one head's query and key: head_dim, plus the rotary part under MLA."""
        return self.head_dim + self.rope_head_dim if self.latent_attention else self.head_dim

    @property
    @once_per_evaluation
    def v_head_dim(self) -> Float[Array, "*batch"]:
        """Width of one head's value (and attention output): `v_head_size` under MLA."""
        if self.latent_attention:
            return jnp.where(self.v_head_size > 0.0, self.v_head_size, self.head_dim)
        return self.head_dim

    @property
    @once_per_evaluation
    def moe_layers(self) -> Float[Array, "*batch"]:
        """Layers whose MLP is a mixture of experts (all layers of a dense model count here
        too, with one expert; see `dense_layers`)."""
        return self.layers - self.dense_layers

    @property
    @once_per_evaluation
    def moe_layer_share(self) -> Float[Array, "*batch"]:
        """Share of the layers that are MoE layers, moe_layers / layers."""
        return self.moe_layers / self.layers

    @property
    @once_per_evaluation
    def dense_ffn(self) -> Float[Array, "*batch"]:
        """MLP width of the dense layers of an MoE model: `dense_ffn_hidden`, or `ffn_hidden`."""
        return jnp.where(self.dense_ffn_hidden > 0.0, self.dense_ffn_hidden, self.ffn_hidden)

    @property
    @once_per_evaluation
    def expert_load(self) -> Float[Array, "*batch"]:
        """Tokens the busiest expert processes, as a multiple of the balanced share: the
        imbalance, capped at the capacity factor when tokens are dropped."""
        capped = jnp.minimum(self.expert_imbalance, self.capacity_factor)
        return jnp.where(self.capacity_factor > 0.0, capped, self.expert_imbalance)

    @property
    @once_per_evaluation
    def dropped_token_fraction(self) -> Float[Array, "*batch"]:
        """Share of the busiest expert's routed tokens dropped by the capacity factor (0 when
        dropless or when the capacity covers the imbalance)."""
        kept = _safe_ratio(self.expert_load, self.expert_imbalance)
        return jnp.where(self.capacity_factor > 0.0, 1.0 - kept, 0.0)

    # ----- parameters ---------------------------------------------------------------------
    @property
    @once_per_evaluation
    def attention_params_per_layer(self) -> Float[Array, "*batch"]:
        """Q, K, V and output projection weights of one layer (MLA: the down and up
        projections and the two latent norms, DeepSeek-V2 Sec. 2.1)."""
        h = self.hidden
        if self.latent_attention:
            qk = self.heads * self.qk_head_dim
            q = jnp.where(self.q_lora_rank > 0.0,
                          h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * qk,
                          h * qk)
            kv = (h * (self.kv_lora_rank + self.rope_head_dim) + self.kv_lora_rank
                  + self.kv_lora_rank * self.heads * (self.head_dim + self.v_head_dim))
            return q + kv + self.heads * self.v_head_dim * h
        return h * (self.q_dim + 2.0 * self.kv_dim) + self.q_dim * h

    @property
    @once_per_evaluation
    def expert_params_per_layer(self) -> Float[Array, "*batch"]:
        """Weights of one MLP expert (the whole MLP when dense)."""
        return self.mlp_matrices * self.hidden * self.ffn_hidden

    @property
    @once_per_evaluation
    def dense_mlp_params(self) -> Float[Array, "*batch"]:
        """Weights of the MLP of one dense layer of an MoE model."""
        return self.mlp_matrices * self.hidden * self.dense_ffn

    @property
    @once_per_evaluation
    def router_params_per_layer(self) -> Float[Array, "*batch"]:
        """MoE router weights of one MoE layer (0 for a dense model)."""
        return jnp.where(self.experts > 1.0, self.hidden * self.experts, 0.0)

    @property
    @once_per_evaluation
    def conditioning_params_per_layer(self) -> Float[Array, "*batch"]:
        """adaLN modulation weights and biases of one layer, 6 h^2 + 6 h (0 without adaLN)."""
        h = self.hidden
        return (6.0 * h * h + 6.0 * h) if self.adaln else 0.0 * h

    @property
    @once_per_evaluation
    def params_per_layer(self) -> Float[Array, "*batch"]:
        """All weights of one MoE layer (of every layer for a dense model): attention, every
        routed and shared expert, router, two norms and the adaLN modulation."""
        return (self.attention_params_per_layer
                + (self.experts + self.shared_experts) * self.expert_params_per_layer
                + self.router_params_per_layer + 2.0 * self.hidden
                + self.conditioning_params_per_layer)

    @property
    @once_per_evaluation
    def dense_layer_params(self) -> Float[Array, "*batch"]:
        """All weights of one dense layer of an MoE model."""
        return (self.attention_params_per_layer + self.dense_mlp_params + 2.0 * self.hidden
                + self.conditioning_params_per_layer)

    @property
    @once_per_evaluation
    def mean_params_per_layer(self) -> Float[Array, "*batch"]:
        """Weights per layer averaged over MoE and dense layers."""
        share = self.moe_layer_share
        return share * self.params_per_layer + (1.0 - share) * self.dense_layer_params

    @property
    @once_per_evaluation
    def embedding_params(self) -> Float[Array, "*batch"]:
        """Token embedding plus (when untied) the output projection, plus the final norm."""
        copies = 1.0 if self.tied_embeddings else 2.0
        return copies * self.vocab * self.hidden + self.hidden

    @property
    @once_per_evaluation
    def params(self) -> Float[Array, "*batch"]:
        """Total parameters."""
        return (self.moe_layers * self.params_per_layer
                + self.dense_layers * self.dense_layer_params + self.embedding_params)

    @property
    @once_per_evaluation
    def moe_active_params_per_layer(self) -> Float[Array, "*batch"]:
        """MLP weights one token touches in one MoE layer: top_k routed and the shared
        experts, and the router."""
        return ((self.top_k + self.shared_experts) * self.expert_params_per_layer
                + self.router_params_per_layer)

    @property
    @once_per_evaluation
    def active_mlp_params_per_layer(self) -> Float[Array, "*batch"]:
        """MLP weights one token touches in a layer, averaged over MoE and dense layers
        (`moe_active_params_per_layer` in MoE layers)."""
        share = self.moe_layer_share
        return share * self.moe_active_params_per_layer + (1.0 - share) * self.dense_mlp_params

    @property
    @once_per_evaluation
    def active_params(self) -> Float[Array, "*batch"]:
        """Parameters one token touches (top_k routed and the shared experts of each MoE
        layer, every dense layer, the embeddings)."""
        per_layer = (self.attention_params_per_layer + self.active_mlp_params_per_layer
                     + 2.0 * self.hidden)
        return self.layers * per_layer + self.embedding_params

    # ----- FLOPs (2 per multiply-accumulate; the counting of Narayanan et al. 2021 eq. 3) ----
    @once_per_evaluation
    def layer_forward_flops_per_token(self, context=None) -> Float[Array, "*batch"]:
        """Forward FLOPs of one layer per token: weight GEMMs plus attention scores.

        Attention counts the full (non-causal) score matrix, QK^T and AV: 4 * context * q_dim,
        as Narayanan et al. 2021 (eq. 3) and PaLM's MFU (Chowdhery et al. 2022, App. B) do.

        **Arguments:**

        - `context`: tokens attended to (default `seq_len`).

        **Returns:** FLOP per token per layer.
        """
        context = self.seq_len if context is None else context
        weight_gemms = 2.0 * (self.attention_params_per_layer + self.active_mlp_params_per_layer)
        # adaLN modulates every token from one conditioning vector per sequence.
        conditioning = 2.0 * self.conditioning_params_per_layer / self.seq_len
        return weight_gemms + conditioning + self.attention_core_flops_per_token(context)

    @once_per_evaluation
    def attention_core_flops_per_token(self, context=None) -> Float[Array, "*batch"]:
        """Forward FLOPs of QK^T and AV of one layer per token over the full (non-causal)
        context: 2 * context * heads * (qk_head_dim + v_head_dim) (= 4 * context * q_dim for
        MHA / GQA); windowed layers count at most `attention_window` keys."""
        context = self.seq_len if context is None else context
        windowed = (self.attention_window > 0.0) & (self.attention_window < context)
        local = jnp.where(windowed, self.attention_window, context)
        share = jnp.where(self.attention_window > 0.0, self.window_layer_share, 0.0)
        context = share * local + (1.0 - share) * context
        return 2.0 * context * self.heads * (self.qk_head_dim + self.v_head_dim)

    @once_per_evaluation
    def mean_attended_keys(self) -> Float[Array, "*batch"]:
        """Keys a query attends to under the causal mask, averaged over the sequence and the
        layers: (s + 1) / 2 for full attention; with a window W < s,
        (W (W + 1) / 2 + (s - W) W) / s in the windowed layers."""
        s, w = self.seq_len, self.attention_window
        full = 0.5 * (s + 1.0)
        windowed = (w > 0.0) & (w < s)
        safe_w = jnp.where(windowed, w, 1.0)
        local = (0.5 * safe_w * (safe_w + 1.0) + (s - safe_w) * safe_w) / s
        share = jnp.where(windowed, self.window_layer_share, 0.0)
        return share * jnp.where(windowed, local, full) + (1.0 - share) * full

    @once_per_evaluation
    def logits_flops_per_token(self) -> Float[Array, "*batch"]:
        """Forward FLOPs of the output projection per token (2 * hidden * vocab)."""
        return 2.0 * self.hidden * self.vocab

    @once_per_evaluation
    def forward_flops_per_token(self, context=None) -> Float[Array, "*batch"]:
        """Forward FLOPs of the whole model per token (all layers + logits)."""
        return self.layers * self.layer_forward_flops_per_token(context) \
            + self.logits_flops_per_token()

    @once_per_evaluation
    def flops_per_token(self, training: bool = True, context=None) -> Float[Array, "*batch"]:
        """Model FLOPs per token: 3x forward for training (backward = 2x forward), 1x inference.

        This is the *model* FLOP count of MFU (no recomputation); `hardware_flops_per_token` adds
        the recomputed forward work that HFU counts.
        """
        fwd = self.forward_flops_per_token(context)
        return 3.0 * fwd if training else fwd

    @once_per_evaluation
    def hardware_flops_per_token(self, recompute_fraction=0.0) -> Float[Array, "*batch"]:
        """Training FLOPs per token including recomputation.

        **Arguments:**

        - `recompute_fraction`: share of each layer's forward work done again in backward
          (1 for full recomputation, 0 for none, the attention-core share for selective).

        **Returns:** FLOP per token.
        """
        layer_fwd = self.layers * self.layer_forward_flops_per_token()
        return self.flops_per_token(True) + recompute_fraction * layer_fwd

    @once_per_evaluation
    def six_n_flops_per_token(self) -> Float[Array, "*batch"]:
        """The 6 * active-parameters estimate of training FLOPs per token (Kaplan et al. 2020)."""
        return 6.0 * self.active_params

    def replace(self, **changes) -> Transformer:
        """A copy with some fields changed (validated like a new Transformer)."""
        return dataclasses.replace(self, **changes)


def _gpt(name, layers, hidden, heads, seq_len, vocab=51200, ffn_hidden=None):
    # Megatron-LM GPT: GELU MLP of width 4h, MHA, tied embeddings, vocab padded to 51200.
    return Transformer(layers=layers, hidden=hidden, heads=heads, kv_heads=heads,
                       ffn_hidden=4 * hidden if ffn_hidden is None else ffn_hidden,
                       vocab=vocab, seq_len=seq_len, name=name)


def _llama(name, layers, hidden, heads, kv_heads, ffn_hidden, vocab, seq_len,
           experts=1, top_k=1, **extra):
    return Transformer(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                       ffn_hidden=ffn_hidden, vocab=vocab, seq_len=seq_len, experts=experts,
                       top_k=top_k, gated_mlp=True, tied_embeddings=False, name=name, **extra)


def _deepseek(name, layers, hidden, heads, dense_ffn, expert_ffn, dense_layers, experts,
              shared, top_k, q_lora, vocab, seq_len):
    # DeepSeek MLA: kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128
    # in every released config (deepseek-ai/DeepSeek-V3 inference/configs/*.json @9b4e9788).
    return Transformer(layers=layers, hidden=hidden, heads=heads, kv_heads=heads,
                       ffn_hidden=expert_ffn, vocab=vocab, seq_len=seq_len, experts=experts,
                       top_k=top_k, head_size=128, shared_experts=shared,
                       dense_layers=dense_layers, dense_ffn_hidden=dense_ffn,
                       q_lora_rank=q_lora, kv_lora_rank=512, rope_head_dim=64, v_head_size=128,
                       latent_attention=True, gated_mlp=True, tied_embeddings=False, name=name)


_TRANSFORMERS: dict[str, Transformer] = {
    # Brown et al. 2020 (GPT-3, arXiv:2005.14165) Table 2.1: 96 layers, d_model 12288, 96 heads,
    # context 2048; GPT-2 BPE vocabulary of 50257 (Radford et al. 2019). Not the same model as
    # "gpt-175b" below: that is Megatron-LM's run of the shape, whose vocabulary is padded to
    # 51200 (a multiple of 128 x tensor-parallel degree), 1.9% more logits FLOPs and embedding
    # weights. Both are kept: each matches the rows published for it.
    "gpt3-175b": _gpt("gpt3-175b", 96, 12288, 96, 2048, vocab=50257),
    # Korthikanti et al. 2022 (arXiv:2205.05198) Table 3: 22B / 175B / 530B / 1T shapes, s=2048,
    # vocab 51200; its 530B / 1T shapes are the SC21 Table 1 rows below (aliases
    # "megatron-530b" and "megatron-1t").
    "gpt-22b": _gpt("gpt-22b", 48, 6144, 64, 2048),
    "gpt-175b": _gpt("gpt-175b", 96, 12288, 96, 2048),
    # Narayanan et al. 2021 (SC21, arXiv:2104.04473) Table 1 (shapes as in
    # data/training_runs.csv, source_key megatron_sc21_table1).
    "gpt-1.7b": _gpt("gpt-1.7b", 24, 2304, 24, 2048),
    "gpt-3.6b": _gpt("gpt-3.6b", 30, 3072, 32, 2048),
    "gpt-7.5b": _gpt("gpt-7.5b", 36, 4096, 32, 2048),
    "gpt-18b": _gpt("gpt-18b", 40, 6144, 48, 2048),
    "gpt-39b": _gpt("gpt-39b", 48, 8192, 64, 2048),
    "gpt-76b": _gpt("gpt-76b", 60, 10240, 80, 2048),
    "gpt-145b": _gpt("gpt-145b", 80, 12288, 96, 2048),
    "gpt-310b": _gpt("gpt-310b", 96, 16384, 128, 2048),
    "gpt-530b": _gpt("gpt-530b", 105, 20480, 128, 2048),
    "gpt-1t": _gpt("gpt-1t", 128, 25600, 160, 2048),
    # Megatron-LM README 2020 weak-scaling table (training_runs.csv source_key
    # megatron_readme_2020): GPT-2 style models, s=1024.
    "gpt2-1b": _gpt("gpt2-1b", 24, 1920, 15, 1024),
    "gpt2-2b": _gpt("gpt2-2b", 30, 2304, 18, 1024),
    "gpt2-4b": _gpt("gpt2-4b", 36, 3072, 24, 1024),
    "gpt2-8b": _gpt("gpt2-8b", 42, 4096, 32, 1024),
    # Llama 3 (Dubey et al. 2024, arXiv:2407.21783) Table 3: layers, model dim, FFN dim, heads,
    # 8 KV heads; SwiGLU, untied embeddings; vocab 128256 as in the released config.json (the
    # paper rounds it to 128K); pre-training sequence length 8192 (Sec. 3.4).
    "llama3-8b": _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
    "llama3-70b": _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
    "llama3-405b": _llama("llama3-405b", 126, 16384, 128, 8, 53248, 128256, 8192),
    # Jiang et al. 2024 (Mixtral of Experts, arXiv:2401.04088) Table 1: dim 4096, 32 layers,
    # 32 heads, 8 KV heads, hidden_dim 14336, vocab 32000, context 32768, 8 experts, top-2.
    "mixtral-8x7b": _llama("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768,
                           experts=8, top_k=2),
    # NeMo's GPT-3 configs (NVIDIA/NeMo nemo/collections/llm/gpt/model/base.py, GPTConfig5B and
    # GPTConfig20B): 24 x 4096 (32 heads, MLP 16384) and 44 x 6144 (48 heads, MLP 24576), GELU,
    # sequence 2048; the GPT-2 BPE vocabulary of 50257 (Radford et al. 2019).
    "gpt3-5b": _gpt("gpt3-5b", 24, 4096, 32, 2048, vocab=50257),
    "gpt3-20b": _gpt("gpt3-20b", 44, 6144, 48, 2048, vocab=50257),
    # Llama 2 (NeMo Llama2Config7B / 13B / 70B, nemo/collections/llm/gpt/model/llama.py): layers,
    # hidden, heads, KV groups, SwiGLU width; vocabulary 32000 and context 4096 (Touvron et al.
    # 2023, arXiv:2307.09288).
    "llama2-7b": _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    "llama2-13b": _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
    "llama2-70b": _llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
    # Nemotron (NeMo Nemotron3Config8B / 22B, Nemotron4Config340B,
    # nemo/collections/llm/gpt/model/nemotron.py): squared-ReLU MLP (two matrices, not gated),
    # untied embeddings, sequence 4096; 8B and 22B multi-head, 340B 8 KV groups. Vocabulary
    # 256000 (the Nemotron-4 340B model_config.yaml on Hugging Face).
    "nemotron3-8b": Transformer(layers=32, hidden=4096, heads=32, kv_heads=32, ffn_hidden=16384,
                                vocab=256000, seq_len=4096, tied_embeddings=False,
                                name="nemotron3-8b"),
    "nemotron3-22b": Transformer(layers=40, hidden=6144, heads=48, kv_heads=48, ffn_hidden=24576,
                                 vocab=256000, seq_len=4096, tied_embeddings=False,
                                 name="nemotron3-22b"),
    "nemotron4-340b": Transformer(layers=96, hidden=18432, heads=96, kv_heads=8,
                                  ffn_hidden=73728, vocab=256000, seq_len=4096,
                                  tied_embeddings=False, name="nemotron4-340b"),
    # Qwen3-30B-A3B (huggingface.co/Qwen/Qwen3-30B-A3B config.json): 48 layers, hidden 2048, 32
    # query heads of 128 (q width 4096), 4 KV heads, every layer MoE with 128 experts of width
    # 768, top-8, vocab 151936, untied embeddings. Sequence 4096 as in the Megatron-Bridge runs
    # of data/training_runs.csv.
    "qwen3-30b-a3b": Transformer(layers=48, hidden=2048, heads=32, kv_heads=4, head_size=128,
                                 ffn_hidden=768, vocab=151936, seq_len=4096, experts=128,
                                 top_k=8, gated_mlp=True, tied_embeddings=False,
                                 name="qwen3-30b-a3b"),
    # Mixtral 8x22B (141B total / 39B active, Mistral AI's announcement as quoted by the NeMo
    # Mixtral user guide): 56 layers, hidden 6144, 48 heads, 8 KV heads, expert FFN 16384, 8
    # experts top-2 (NeMo nemo/collections/llm/gpt/model/mixtral.py MixtralConfig8x22B
    # @8cfedd72); vocab 32K (Megatron-LM moe/README.md @0b981f9c, Mixtral 8x22B row); the
    # 4096-token sequence of that README's training recipe.
    "mixtral-8x22b": _llama("mixtral-8x22b", 56, 6144, 48, 8, 16384, 32000, 4096,
                            experts=8, top_k=2),
    # DeepSeek-V3 (671B total / 37B active, deepseek-ai/DeepSeek-V3 README @9b4e9788;
    # arXiv:2412.19437): inference/configs/config_671B.json: vocab 129280, dim 7168, inter_dim
    # 18432 (the 3 dense layers), moe_inter_dim 2048, 61 layers, n_dense_layers 3, 128 heads,
    # 256 routed + 1 shared experts, 8 activated, q_lora_rank 1536. The 14B multi-token-
    # prediction module is not counted (671B is the main model). Sequence 4096: the pre-training
    # length (and the Megatron-Bridge rows in data/training_runs.csv).
    "deepseek-v3": _deepseek("deepseek-v3", 61, 7168, 128, 18432, 2048, 3, 256, 1, 8, 1536,
                             129280, 4096),
    # DeepSeek-V2 (236B total / 21B active, DeepSeek-V3 repo README table / arXiv:2405.04434):
    # config_236B.json @9b4e9788: vocab 102400, dim 5120, inter 12288, moe_inter 1536,
    # 60 layers, 1 dense, 128 heads, 160 routed + 2 shared, top-6, q_lora 1536; sequence 4096
    # (its pre-training length, arXiv:2405.04434 Sec. 3.1).
    "deepseek-v2": _deepseek("deepseek-v2", 60, 5120, 128, 12288, 1536, 1, 160, 2, 6, 1536,
                             102400, 4096),
    # Qwen3-235B-A22B (235B total / 22B active by its name and model card): 94 layers, hidden
    # 4096, 64 heads of 128, 4 KV heads, 128 experts top-8, moe_intermediate_size 1536, no shared
    # expert, vocab 151936, untied (huggingface.co/Qwen/Qwen3-235B-A22B config.json as quoted in
    # /work/notes/workload_sources.md Sec. 2b; Megatron-MoE-ModelZoo Qwen3-235B-A22B.yaml
    # agrees); sequence 4096 (the Megatron-Bridge / ModelZoo rows).
    "qwen3-235b-a22b": _llama("qwen3-235b-a22b", 94, 4096, 64, 4, 1536, 151936, 4096,
                              experts=128, top_k=8, head_size=128),
    # Llama 4 Maverick (400B total / 17B active, Llama 4 model card): 48 layers, hidden 5120,
    # 40 heads / 8 KV of 128, 128 routed experts of 8192 + 1 shared of 8192, top-1, MoE every
    # other layer (24 dense layers of FFN 16384), vocab 202048 (NeMo llama.py Llama4Config /
    # Llama4Experts128Config @8cfedd72; TRT-LLM's copy of the HF config agrees). Sequence 8192:
    # its attention_chunk_size (the model card's 1M context is not a training length here).
    "llama4-maverick": _llama("llama4-maverick", 48, 5120, 40, 8, 8192, 202048, 8192,
                              experts=128, top_k=1, head_size=128, shared_experts=1,
                              dense_layers=24, dense_ffn_hidden=16384),
    # DBRX (132B total / 36B active, databricks/dbrx README @1065b7bd): d_model 6144, 40
    # layers, 48 heads, 8 KV heads, ffn 10752 per expert, 16 experts top-4, vocab 100352, max
    # sequence 32768 (HF config.json copies).
    "dbrx": _llama("dbrx", 40, 6144, 48, 8, 10752, 100352, 32768, experts=16, top_k=4),
    # Mistral 7B (Jiang et al. 2023, arXiv:2310.06825) Table 1: dim 4096, 32 layers, head_dim
    # 128, hidden_dim 14336, 32 heads, 8 KV heads, window_size 4096 (every layer), context_len
    # 8192, vocab 32000.
    "mistral-7b": _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 8192,
                         attention_window=4096),
    # GPT-J-6B (Wang & Komatsuzaki 2021; EleutherAI/gpt-j-6b config.json): 28 layers, n_embd
    # 4096, 16 heads, MLP 4 x 4096 (GELU), vocab 50400, n_positions 2048, untied, parallel
    # attention + MLP block.
    "gpt-j-6b": Transformer(layers=28, hidden=4096, heads=16, kv_heads=16, ffn_hidden=16384,
                            vocab=50400, seq_len=2048, tied_embeddings=False,
                            parallel_block=True, name="gpt-j-6b"),
    # DiT-XL/2 (Peebles & Xie 2023, arXiv:2212.09748; facebookresearch/DiT models.py
    # @ed81ce22): depth 28, hidden 1152, 16 heads, mlp_ratio 4 (GELU), patch 2 on the 32 x 32 x 4
    # VAE latent of a 256 x 256 image: (32 / 2)^2 = 256 tokens, full (non-causal) attention,
    # adaLN-Zero. "vocab" is the final linear's width, patch^2 x 8 output channels (4 x 2 with
    # learn_sigma) = 32 (untied: the patch embedding, 2 x 2 x 4 -> 1152, is counted as a second
    # 32-wide matrix, 16 x 1152 parameters more than the conv).
    "dit-xl-2": Transformer(layers=28, hidden=1152, heads=16, kv_heads=16, ffn_hidden=4608,
                            vocab=32, seq_len=256, causal=False, adaln=True,
                            tied_embeddings=False, name="dit-xl-2"),
    # The same at 512 x 512: a 64 x 64 latent, 1024 tokens.
    "dit-xl-2-512": Transformer(layers=28, hidden=1152, heads=16, kv_heads=16, ffn_hidden=4608,
                                vocab=32, seq_len=1024, causal=False, adaln=True,
                                tied_embeddings=False, name="dit-xl-2-512"),
    # CLIP ViT-L/14 at 336 px, LLaVA-1.5's vision tower (openai/clip-vit-large-patch14-336): 24
    # layers, width 1024, 16 heads, MLP 4096 (/work/notes/workload_sources.md 5a); (336 / 14)^2
    # = 576 patch tokens + the CLS token; non-causal; no output head (vocab 1).
    "clip-vit-l-14-336": Transformer(layers=24, hidden=1024, heads=16, kv_heads=16,
                                     ffn_hidden=4096, vocab=1, seq_len=577, causal=False,
                                     name="clip-vit-l-14-336"),
    # Vicuna-7B v1.5, LLaVA-1.5-7B's language model: the Llama 2 7B shape (32 layers, 4096
    # hidden, 32 heads, FFN 11008, vocab 32000; Touvron et al. 2023, arXiv:2307.09288 and the
    # released config.json, as data/README.md), at LLaVA's maximum length 2048 (scripts/v1_5).
    "vicuna-7b": _llama("vicuna-7b", 32, 4096, 32, 32, 11008, 32000, 2048),
}

# Published FLOPs of the DiT presets: the DiT README's "Gflops" per forward pass of one image,
# which count multiply-accumulates (fvcore's convention: 118.6 for XL/2 at 256 is 2 x 28 x
# 256 x 12 h^2 / 2 plus attention, i.e. half our 2-per-MAC count).
PUBLISHED_GMACS_PER_IMAGE: Mapping[str, float] = {"dit-xl-2": 119.0, "dit-xl-2-512": 525.0}

# Published total / active parameter counts of the MoE presets, (total, active, the published
# figure's rounding unit), in parameters; sources as in the preset comments. Tests check the
# shapes against them.
PUBLISHED_PARAMS: Mapping[str, tuple[float, float, float]] = {
    "mixtral-8x7b": (47e9, 13e9, 1e9),  # arXiv:2401.04088 abstract: "47B ... 13B active"
    "mixtral-8x22b": (141e9, 39e9, 1e9),
    "deepseek-v3": (671e9, 37e9, 1e9),
    "deepseek-v2": (236e9, 21e9, 1e9),
    "qwen3-235b-a22b": (235e9, 22e9, 1e9),
    "llama4-maverick": (400e9, 17e9, 1e9),
    "dbrx": (132e9, 36e9, 1e9),
}

# Other names in common use for a preset above: they resolve to the same object (and its name).
# Korthikanti et al. 2022 and the Megatron-LM README call the SC21 530B and 1T shapes Megatron
# models; the data rows (SC21 Table 1, training_runs.csv) call them GPT-530B and GPT-1T.
ALIASES: Mapping[str, str] = {"megatron-530b": "gpt-530b", "megatron-1t": "gpt-1t"}


class _AliasedPresets(PresetMapping):
    """Presets by name, where an alias (not listed when iterating) resolves to its preset.

    The KeyError of an unknown name lists the presets and the aliases.
    """

    def __init__(self, kind: str, items: dict, aliases: Mapping[str, str]):
        super().__init__(kind, items)
        unknown = sorted(set(aliases.values()) - set(items))
        if unknown:
            raise ValueError(f"{kind} aliases point to unknown presets {unknown}")
        self.aliases = dict(aliases)

    def __getitem__(self, name):
        try:
            return super().__getitem__(self.aliases.get(name, name))
        except KeyError as e:
            aliases = ", ".join(f"{a} -> {p}" for a, p in sorted(self.aliases.items()))
            raise KeyError(f"{e.args[0]}; aliases: {aliases}") from None


TRANSFORMERS: Mapping[str, Transformer] = _AliasedPresets("transformer", _TRANSFORMERS, ALIASES)
