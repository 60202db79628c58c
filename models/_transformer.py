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

from dse.hardware._validate import PresetMapping, as_float_array, check_range

# Shapes are continuous (a FLOP count differentiates in them) but bounded: at most 2^24, where
# float32 stops holding whole numbers exactly; the largest published widths, vocabularies and
# contexts are below 2^21. (lower, lower inclusive, upper); head_size 0 means hidden / heads.
_COUNT = (1.0, True, 2.0**24)
TRANSFORMER_BOUNDS: dict[str, tuple[float, bool, float]] = {
    "layers": _COUNT,
    "hidden": (0.0, False, 2.0**24),
    "heads": _COUNT,
    "kv_heads": _COUNT,
    "ffn_hidden": (0.0, False, 2.0**24),
    "vocab": _COUNT,
    "seq_len": _COUNT,
    "experts": _COUNT,
    "top_k": _COUNT,
    "head_size": (0.0, True, 2.0**24),
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
    gated_mlp: bool = eqx.field(static=True, default=False)
    tied_embeddings: bool = eqx.field(static=True, default=True)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        for field, (lo, lo_inclusive, hi) in TRANSFORMER_BOUNDS.items():
            check_range("Transformer", field, getattr(self, field), lower=lo, upper=hi,
                        lower_inclusive=lo_inclusive)
        # Relations between fields: only on concrete values (tracers are left alone).
        for small, big in (("kv_heads", "heads"), ("top_k", "experts")):
            s, b = getattr(self, small), getattr(self, big)
            if isinstance(s, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
                continue
            if bool(np.any(np.asarray(s) > np.asarray(b))):
                raise ValueError(
                    f"Transformer.{small} must be <= Transformer.{big} ({b}); got {s}")

    # ----- shapes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> Float[Array, "*batch"]:
        """Width of one attention head: `head_size`, or hidden / heads when that is 0."""
        given = self.head_size > 0.0
        return jnp.where(given, self.head_size, self.hidden / self.heads)

    @property
    def q_dim(self) -> Float[Array, "*batch"]:
        """Width of Q (and of the attention output) across all heads, heads * head_dim."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> Float[Array, "*batch"]:
        """Width of K (or V) across all KV heads, kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    @property
    def mlp_matrices(self) -> float:
        """Weight matrices in one MLP (expert): 3 when gated (SwiGLU), else 2."""
        return 3.0 if self.gated_mlp else 2.0

    # ----- parameters ---------------------------------------------------------------------
    @property
    def attention_params_per_layer(self) -> Float[Array, "*batch"]:
        """Q, K, V and output projection weights of one layer."""
        h = self.hidden
        return h * (self.q_dim + 2.0 * self.kv_dim) + self.q_dim * h

    @property
    def expert_params_per_layer(self) -> Float[Array, "*batch"]:
        """Weights of one MLP expert (the whole MLP when dense)."""
        return self.mlp_matrices * self.hidden * self.ffn_hidden

    @property
    def router_params_per_layer(self) -> Float[Array, "*batch"]:
        """MoE router weights of one layer (0 for a dense model)."""
        return jnp.where(self.experts > 1.0, self.hidden * self.experts, 0.0)

    @property
    def params_per_layer(self) -> Float[Array, "*batch"]:
        """All weights of one layer: attention, every expert, router and two norms."""
        return (self.attention_params_per_layer + self.experts * self.expert_params_per_layer
                + self.router_params_per_layer + 2.0 * self.hidden)

    @property
    def embedding_params(self) -> Float[Array, "*batch"]:
        """Token embedding plus (when untied) the output projection, plus the final norm."""
        copies = 1.0 if self.tied_embeddings else 2.0
        return copies * self.vocab * self.hidden + self.hidden

    @property
    def params(self) -> Float[Array, "*batch"]:
        """Total parameters."""
        return self.layers * self.params_per_layer + self.embedding_params

    @property
    def active_params(self) -> Float[Array, "*batch"]:
        """Parameters one token touches (top_k experts of each MoE layer)."""
        per_layer = (self.attention_params_per_layer + self.top_k * self.expert_params_per_layer
                     + self.router_params_per_layer + 2.0 * self.hidden)
        return self.layers * per_layer + self.embedding_params

    # ----- FLOPs (2 per multiply-accumulate; the counting of Narayanan et al. 2021 eq. 3) ----
    def layer_forward_flops_per_token(self, context=None) -> Float[Array, "*batch"]:
        """Forward FLOPs of one layer per token: weight GEMMs plus attention scores.

        Attention counts the full (non-causal) score matrix, QK^T and AV: 4 * context * q_dim,
        as Narayanan et al. 2021 (eq. 3) and PaLM's MFU (Chowdhery et al. 2022, App. B) do.

        **Arguments:**

        - `context`: tokens attended to (default `seq_len`).

        **Returns:** FLOP per token per layer.
        """
        context = self.seq_len if context is None else context
        weight_gemms = 2.0 * (self.attention_params_per_layer
                              + self.top_k * self.expert_params_per_layer
                              + self.router_params_per_layer)
        return weight_gemms + 4.0 * context * self.q_dim

    def logits_flops_per_token(self) -> Float[Array, "*batch"]:
        """Forward FLOPs of the output projection per token (2 * hidden * vocab)."""
        return 2.0 * self.hidden * self.vocab

    def forward_flops_per_token(self, context=None) -> Float[Array, "*batch"]:
        """Forward FLOPs of the whole model per token (all layers + logits)."""
        return self.layers * self.layer_forward_flops_per_token(context) \
            + self.logits_flops_per_token()

    def flops_per_token(self, training: bool = True, context=None) -> Float[Array, "*batch"]:
        """Model FLOPs per token: 3x forward for training (backward = 2x forward), 1x inference.

        This is the *model* FLOP count of MFU (no recomputation); `hardware_flops_per_token` adds
        the recomputed forward work that HFU counts.
        """
        fwd = self.forward_flops_per_token(context)
        return 3.0 * fwd if training else fwd

    def hardware_flops_per_token(self, recompute_fraction=0.0) -> Float[Array, "*batch"]:
        """Training FLOPs per token including recomputation.

        **Arguments:**

        - `recompute_fraction`: share of each layer's forward work done again in backward
          (1 for full recomputation, 0 for none, the attention-core share for selective).

        **Returns:** FLOP per token.
        """
        layer_fwd = self.layers * self.layer_forward_flops_per_token()
        return self.flops_per_token(True) + recompute_fraction * layer_fwd

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
           experts=1, top_k=1):
    return Transformer(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                       ffn_hidden=ffn_hidden, vocab=vocab, seq_len=seq_len, experts=experts,
                       top_k=top_k, gated_mlp=True, tied_embeddings=False, name=name)


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
