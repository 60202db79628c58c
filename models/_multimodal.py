"""Multimodal workloads on the transformer machinery: a vision encoder feeding an LLM (LLaVA).

A LLaVA-style model (Liu et al. 2023, LLaVA-1.5: haotian-liu/LLaVA @c121f043) encodes each image
with a ViT (a non-causal `Transformer`), keeps the patch tokens of a late layer, maps them
through a small MLP projector into the LLM's width and places them in the LLM's sequence: an
image adds (image_size / patch_size)^2 tokens per tile (576 for a 336 px image and 14 px
patches; LLaVA-NeXT's AnyRes adds up to four 336 px tiles to the base image). The LLM then trains
on text + image tokens. A diffusion transformer (DiT) is a plain non-causal `Transformer` with
adaLN conditioning (`TRANSFORMERS["dit-xl-2"]`) trained with `train_step`.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
from jaxtyping import Array, Float

from dse.hardware import System
from dse.hardware._once import evaluates_once
from dse.hardware._validate import as_float_array, check_range

from ._calibration import DEFAULT, Calibration
from ._layer import gemm_fwd_bwd, layer_costs
from ._training import TrainReport, train_step
from ._training_plan import TrainingPlan
from ._transformer import TRANSFORMERS, Transformer


class VisionLanguage(eqx.Module):
    """A vision encoder feeding an LLM through an MLP projector (LLaVA).

    **Fields:**

    - `encoder`: the vision `Transformer` (non-causal), its `seq_len` the tokens it encodes per
      tile (patches, plus a CLS token where it has one).
    - `llm`: the language `Transformer`; its `seq_len` is replaced by text + image tokens.
    - `projector` (static): widths of the projector MLP, encoder width to LLM width
      (LLaVA-1.5 `mlp2x_gelu`: 1024 -> 4096 -> 4096).
    - `image_size`, `patch_size`: pixels of a (square) tile and of a patch.
    - `tiles_per_image`: tiles an image is encoded as (1; up to 5 for LLaVA-NeXT AnyRes: the
      resized base image and a 2 x 2 grid).
    - `images_per_sample`: images in one training sequence.
    - `name` (static): label.
    """

    encoder: Transformer
    llm: Transformer
    projector: tuple[int, ...] = eqx.field(static=True)
    image_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=336.0)
    patch_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=14.0)
    tiles_per_image: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    images_per_sample: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                          default=1.0)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        for field in ("image_size", "patch_size", "tiles_per_image"):
            check_range("VisionLanguage", field, getattr(self, field), lower=1.0,
                        upper=2.0**20, lower_inclusive=True)
        check_range("VisionLanguage", "images_per_sample", self.images_per_sample,
                    lower=0.0, upper=2.0**20, lower_inclusive=True)
        if len(self.projector) < 2 or any(int(w) != w or w < 1 for w in self.projector):
            raise ValueError(f"VisionLanguage.projector must be a tuple of at least two whole "
                             f"widths >= 1 (encoder width ... LLM width); got "
                             f"{self.projector!r}")

    @property
    def image_tokens(self) -> Float[Array, "*batch"]:
        """LLM tokens one image adds: tiles x (image_size / patch_size)^2 (576 for LLaVA-1.5,
        whose feature selection drops the CLS token)."""
        return self.tiles_per_image * (self.image_size / self.patch_size) ** 2

    def llm_tokens(self, text_tokens) -> Float[Array, "*batch"]:
        """Tokens of one LLM training sequence: text plus the images' tokens."""
        return text_tokens + self.images_per_sample * self.image_tokens

    def replace(self, **changes) -> VisionLanguage:
        """A copy with some fields changed (validated like a new VisionLanguage)."""
        return dataclasses.replace(self, **changes)


class VisionLanguageReport(eqx.Module):
    """One training step of a `VisionLanguage` model (SI units).

    `step_time == encoder_time + projector_time + llm.step_time`: the encoder (forward only
    when frozen), the projector (forward and backward), then the LLM's step (`llm`, a
    `TrainReport` with its own breakdown, over text + image tokens). `fits` is the LLM's (the
    encoder's activations of a frozen tower are not kept).
    """

    step_time: Float[Array, "*batch"]
    samples_per_s: Float[Array, "*batch"]
    encoder_time: Float[Array, "*batch"]
    projector_time: Float[Array, "*batch"]
    llm: TrainReport


@evaluates_once
def vision_language_train_step(model: VisionLanguage, plan: TrainingPlan, system: System, *,
                               text_tokens, train_encoder: bool = False,
                               calibration: Calibration = DEFAULT,
                               smooth: bool = False) -> VisionLanguageReport:
    """One training step of a LLaVA-style model: images encoded, projected, and the LLM trained
    on text + image tokens with `plan`.

    **Arguments:**

    - `model`: the `VisionLanguage` model.
    - `plan`: the LLM's `TrainingPlan`; the encoder runs data parallel over the same chips
      (each chip encodes the images of its share of the global batch).
    - `system`: the `System`.
    - `text_tokens`: text tokens per sample.
    - `train_encoder`: train the vision tower too (LLaVA-1.5 freezes it: forward only).
    - `calibration`, `smooth`: as `train_step`.

    **Returns:** a `VisionLanguageReport`.
    """
    chips = float(system.num_chips)
    images = plan.global_batch * model.images_per_sample * model.tiles_per_image
    encoder_plan = TrainingPlan(tp=1.0, pp=1.0, dp=chips, microbatch_size=images / chips,
                                global_batch=images)
    eta = calibration.kernel_fraction
    if train_encoder:
        encoder_time = train_step(model.encoder, encoder_plan, system, calibration=calibration,
                                  smooth=smooth).step_time
    else:
        lc = layer_costs(model.encoder, encoder_plan, system, calibration=calibration,
                         smooth=smooth)
        encoder_time = model.encoder.layers * lc.fwd / eta
    # The projector on each chip's image tokens (forward, dX and dW).
    tokens = plan.global_batch * model.images_per_sample / chips * model.image_tokens
    projector_time = 0.0 * tokens
    for k, n in zip(model.projector[:-1], model.projector[1:], strict=True):
        f, dx, dw = gemm_fwd_bwd(system.chip, tokens, float(n), float(k), smooth, calibration)
        projector_time = projector_time + (f.time + dx.time + dw.time) / eta
    llm = model.llm.replace(seq_len=model.llm_tokens(text_tokens))
    report = train_step(llm, plan, system, calibration=calibration, smooth=smooth)
    step = encoder_time + projector_time + report.step_time
    return VisionLanguageReport(step_time=step, samples_per_s=plan.global_batch / step,
                                encoder_time=encoder_time, projector_time=projector_time,
                                llm=report)


def llava_15_7b() -> VisionLanguage:
    """LLaVA-1.5-7B: CLIP ViT-L/14-336 (576 image tokens, CLS dropped), an mlp2x_gelu projector
    1024 -> 4096 -> 4096, Vicuna-7B v1.5 (haotian-liu/LLaVA @c121f043 scripts/v1_5,
    llava/model/multimodal_encoder/clip_encoder.py)."""
    return VisionLanguage(encoder=TRANSFORMERS["clip-vit-l-14-336"],
                          llm=TRANSFORMERS["vicuna-7b"], projector=(1024, 4096, 4096),
                          name="llava-1.5-7b")

