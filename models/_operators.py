"""Operators on one chip: GEMM, flash-style attention, memory-bound element-wise ops.

Each operator returns an `OpCost`: FLOPs, HBM bytes, the compute and memory times and their
roofline. Two physical effects set the times:

- **On-chip reuse.** HBM traffic of a GEMM depends on the SRAM through tiling. For a C = A B
  product (M x K times K x N) with S words of fast memory the sequential I/O lower bound is
  2 M N K / sqrt(S) + M N (Kwasniewski et al. 2019, "Red-blue pebbling revisited", SC'19, Thm. 1;
  the MNK/sqrt(S) scaling is Hong & Kung 1981 and Irony, Toledo & Tiskin 2004), attained by an
  output-stationary tiling with an a x b block of C resident: A is streamed N/b times and B M/a
  times. We take the best such tiling under a <= M, b <= N, a b <= S, so the traffic falls
  continuously with S to the compulsory minimum M K + K N + M N once the whole output fits.
  Attention follows the FlashAttention I/O analysis (Dao et al. 2022, Thm. 2; Dao 2023 for the
  FlashAttention-2 loop order): K and V are streamed once per resident block of query rows.
- **Efficiency in op size.** Achieved throughput rises smoothly with op size: an op whose ideal
  time (work / peak rate) is s runs at efficiency eta(s) = eta_max * s / (s + s_half), i.e. in
  time (s + s_half) / eta_max: a fixed start-up cost plus a sustained fraction of peak. For
  matrix work eta_max = `Chip.matmul_fraction` (the chip's measured best-GEMM fraction: its clock
  under its power limit) x `Calibration.matrix_max`; s_half and the memory pair are fields of
  the `Calibration` every operator takes (fitted by `dse.calibration` to measured A100
  per-operator latencies and the measured max-achievable matmul rate).
- **Tile choice, tile and wave quantization** (`wave_efficiency`, GPUs): a GEMM's output runs
  as thread-block tiles (the CUTLASS / cuBLAS family, 256 x 128 down to 64 x 64) in waves of one
  tile per SM; the idle SMs of the last wave and the padded edge tiles cost time (NVIDIA
  DU-09799-001, Sec. 3), a smaller tile less of that but more L2 operand traffic per MAC. Why a
  TP-sharded or small GEMM reaches less of the best-GEMM rate on a 132-SM H100 than on a 108-SM
  A100, and why the measured best shapes fill their waves.
- **Fused attention** runs at its own rate (`_attention_compute_time`): the kernel's matrix
  rate relative to the chip's best GEMM, the non-matrix work per score (why head dim 64 is
  slower than 128), the masked half block on the causal diagonal and the per-block I/O left
  exposed (why short sequences are slower), fitted to published FlashAttention-2/3/4
  throughputs (data/attention_kernels.csv).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from dse.hardware import Chip
from dse.hardware._precision import ENGINE_NAMES
from dse.hardware._validate import check_choice

from ._calibration import DEFAULT, Calibration

# Smooth-max exponent of `roofline(..., smooth=True)`: (c^p + m^p)^(1/p) exceeds max(c, m) by at
# most 2^(1/p) - 1 (9% for p = 8) and only at the crossover c = m. A design choice trading
# accuracy at the ridge against curvature for gradient-based search, not a measured constant.
# An integer power of two: x^8 is three multiplies (lax.integer_pow) and the 8th root three
# square roots, where a float exponent is a general pow (exp and log) per term, which made a
# vmapped smooth GPT-3 train_step 16x slower than the hard max on the CPU.
SMOOTH_MAX_P = 8
_SMOOTH_MAX_SQRTS = SMOOTH_MAX_P.bit_length() - 1  # the p-th root as square roots
assert 1 << _SMOOTH_MAX_SQRTS == SMOOTH_MAX_P, "SMOOTH_MAX_P must be a power of two"



def _f(x):
    """An array of the default float dtype (float32, or float64 under x64)."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def stacked_calls(fn, rows):
    """`[fn(*row) for row in rows]`, computed as one `jax.vmap` of `fn` over the rows stacked.

    A model that costs many ops of one kind (a layer's GEMMs, its element-wise kernels, a step's
    collectives) traces and compiles `fn` once instead of once per op: the jitted graph, its
    compile time and its tracing shrink by about the number of rows, and each row's arithmetic
    is the same as a call of its own. The arguments of a row broadcast against each other's
    rows (scalars, or arrays of one batch shape). The split matters for speed: a sum over the
    rows as element-wise adds lets XLA fold each row's constants into its own arithmetic, which
    a reduction over the stacked axis does not (`dse.models._layer.gemms_fwd_bwd`).
    """
    cols = [jnp.stack(jnp.broadcast_arrays(*(_f(row[i]) for row in rows)))
            for i in range(len(rows[0]))]
    leaves, treedef = jax.tree.flatten(jax.vmap(fn)(*cols))
    # One split per leaf rather than a slice and a squeeze per row: fewer ops to trace.
    n = len(rows)
    pieces = [[jnp.squeeze(p, 0) for p in jnp.split(leaf, n)] for leaf in leaves]
    return [treedef.unflatten([piece[j] for piece in pieces]) for j in range(n)]


class OpCost(eqx.Module):
    """Cost of one operator on one chip (SI units; arrays broadcast over a batch).

    **Fields:**

    - `flops`: arithmetic work, FLOP.
    - `hbm_bytes`: off-chip memory traffic, bytes.
    - `compute_time`: time if compute were the only limit, s.
    - `memory_time`: time if HBM bandwidth were the only limit, s.
    - `time`: roofline of the two (max, or smooth max), s.
    """

    flops: Float[Array, "..."]
    hbm_bytes: Float[Array, "..."]
    compute_time: Float[Array, "..."]
    memory_time: Float[Array, "..."]
    time: Float[Array, "..."]

    def __add__(self, other: OpCost) -> OpCost:
        """Two ops run one after the other: every field adds."""
        return OpCost(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))

    def scale(self, factor) -> OpCost:
        """`factor` identical ops run one after the other."""
        return OpCost(*(a * factor for a in _fields(self)))


def _fields(c: OpCost):
    return (c.flops, c.hbm_bytes, c.compute_time, c.memory_time, c.time)


def roofline(compute_time: ArrayLike, memory_time: ArrayLike,
             smooth: bool = False) -> Float[Array, "*batch"]:
    """Time of an op limited by compute or memory: the max, or a smooth max.

    **Arguments:**

    - `compute_time`, `memory_time`: the two limits, s (>= 0).
    - `smooth`: use the p-norm (c^p + m^p)^(1/p) (p = `SMOOTH_MAX_P`), which is differentiable
      where c = m and never below the max.

    **Returns:** time, s.
    """
    c = jnp.asarray(compute_time)
    m = jnp.asarray(memory_time)
    if not smooth:
        return jnp.maximum(c, m)
    big = jnp.maximum(c, m)
    positive = big > 0
    safe_big = jnp.where(positive, big, 1.0)
    # `ratio`: the derivative of c / big would form big^2, which overflows float32 once a time
    # passes 1.8e19 s (the far corners of a design space: a chip of one MAC per core).
    total = ratio(c, safe_big) ** SMOOTH_MAX_P + ratio(m, safe_big) ** SMOOTH_MAX_P
    root = jnp.where(positive, total, 1.0)
    for _ in range(_SMOOTH_MAX_SQRTS):
        root = jnp.sqrt(root)
    norm = safe_big * root
    return jnp.where(positive, norm, 0.0)


@jax.custom_jvp
def ratio(num, den):
    """num / den, with a derivative that never forms den^2.

    JAX differentiates a division as d num / den - num d den den^-2; once den exceeds 1.8e19
    (the peak FLOP/s of a large chip, chips x peak, a step's FLOP) den^2 overflows float32 and
    the derivative turns into NaN or silently into 0. Here it is (d num - ratio d den) / den,
    the same derivative in exact arithmetic; the value is the plain division.
    """
    return num / den


@ratio.defjvp
def _ratio_jvp(primals, tangents):
    num, den = primals
    d_num, d_den = tangents
    out = num / den
    return out, (d_num - out * d_den) / den


def _safe_div(num, den):
    """num / den, and 0 where den == 0 (double-where: no inf/NaN in value or gradient)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def matrix_rate(chip: Chip, engine: str = "bf16") -> Float[Array, "*batch"]:
    """Peak FLOP/s of a matrix op on `engine`, times its sustained fraction relative to the
    16-bit engine (`Chip.fp4_efficiency` for FP4, `Chip.low_precision_efficiency` for the
    other narrow engines).

    A chip without the engine (rate 0) runs the op on its 16-bit array: the time stays finite
    and differentiable, and the models that ask for the engine flag the design infeasible
    (`Reason.PRECISION`) or charge a de-quantization (serving).
    """
    check_choice("matrix_rate", "engine", engine, ENGINE_NAMES)
    if engine == "bf16":
        return chip.peak_flops
    rate = chip.rate(engine)
    has = rate > 0.0
    efficiency = chip.fp4_efficiency if engine == "fp4" else chip.low_precision_efficiency
    return chip.peak_flops * jnp.where(has, rate * efficiency, 1.0)


def matrix_efficiency(chip: Chip, calibration: Calibration = DEFAULT) -> Float[Array, "*batch"]:
    """Sustained fraction of peak matrix FLOP/s on large GEMMs: the chip's measured best-GEMM
    fraction (`Chip.matmul_fraction`: its clock under its power limit, its pipeline) times the
    calibrated share of it a workload's GEMMs reach (`Calibration.matrix_max`)."""
    return chip.matmul_fraction * calibration.matrix_max


def _matrix_time(chip: Chip, cal: Calibration, active, core_time):
    """A matrix op's time, s, from its time at the engine's peak (`core_time`): plus the op's
    start-up time, at the chip's sustained fraction (`matrix_efficiency`); 0 where not
    `active`."""
    return active * (core_time + cal.matrix_overhead_s) / matrix_efficiency(chip, cal)


def _times(chip: Chip, flops, hbm_bytes, cal: Calibration, active, matrix: bool = True,
           engine: str = "bf16", vector_rate=1.0):
    """Compute and memory times with the size-dependent efficiency.

    `active` is 1 where the op exists (a zero-size op costs no start-up time). Matrix work runs
    on `engine` (`matrix_rate`: its peak times its sustained fraction relative to the 16-bit
    engine), at the same `matrix_efficiency` as 16-bit work. Vector work
    (`matrix=False`) has no measured efficiency to fit: it runs at the vector peak and shares
    the memory-op start-up time (element-wise ops are memory-bound on every chip in chips.csv).
    A chip without HBM (`hbm_bandwidth == 0`) keeps its operands in SRAM: no HBM time.
    """
    ideal_m = _safe_div(hbm_bytes, chip.hbm_bandwidth)
    memory_time = active * (ideal_m + cal.memory_overhead_s) / cal.memory_max
    if matrix:
        compute_time = _matrix_time(chip, cal, active, ratio(flops, matrix_rate(chip, engine)))
    else:
        compute_time = active * (ratio(flops, chip.vector_flops * vector_rate)
                                 + cal.memory_overhead_s)
    return compute_time, memory_time


# Key-block width of the fused attention kernels: FlashAttention-2 tiles keys in blocks of 64 or
# 128 (Dao 2023, arXiv 2307.08691, Sec. 3.3), FlashAttention-3 and -4 in 128 (Shah et al. 2024,
# arXiv 2407.08608, Sec. 4). Under a causal mask the diagonal block of every query block is
# computed in full and half of it masked: half a block of wasted keys per query row.
ATTENTION_BLOCK = 128.0


def _attention_compute_time(chip: Chip, flops, io_bytes, head_dim, attended, causal,
                            cal: Calibration, backward: bool, active):
    """Compute time of a fused attention kernel (forward or backward), s.

    Matrix products at the chip's best-GEMM rate times `attention_scale` (and
    `attention_backward_scale`), stretched by the non-matrix work per score
    (1 + attention_softmax_dim / head_dim) and, under a causal mask, by the computed-but-masked
    half block per row; plus the exposed HBM time of the per-block I/O (`io_bytes`).
    """
    rate = chip.peak_flops * chip.matmul_fraction * cal.attention_scale
    if backward:
        rate = rate * cal.attention_backward_scale
    exposed_io = cal.attention_backward_io if backward else cal.attention_forward_io
    softmax = 1.0 + _safe_div(cal.attention_softmax_dim, head_dim)
    masked = jnp.where(causal, 1.0 + 0.5 * ATTENTION_BLOCK / attended, 1.0)
    matmul = flops / rate * softmax * masked
    return active * (matmul + exposed_io * _safe_div(io_bytes, chip.hbm_bandwidth)
                     + cal.matrix_overhead_s)


# Output tiles a GPU GEMM kernel may run, one thread block per SM (CUTLASS 2.x SM80 tensor-op
# GEMMs, python/cutlass_library/generator.py, GenerateSM80_TensorOp_16816: 256x128, 128x256,
# 256x64, 64x256, 128x128, 128x64, 64x128, 64x64 thread-block tiles; cuBLAS ships the same
# family: NVIDIA, "Matrix Multiplication Background User's Guide", DU-09799-001_v001, Feb. 2023,
# Sec. 2.3 "Typical tile dimensions in cuBLAS and performance": 256x128 and 128x256 most
# efficient, 64x64 least). A wave is `core_count` tiles (DU-09799-001 Sec. 3.2: A100, 108 SMs, a
# wave of 108 tiles). Hopper and Blackwell kernels keep the same per-SM tile family (CUTLASS 3
# SM90 warp-specialized GEMMs 128x256 / 128x128 / 64x128 per CTA; Blackwell 2-SM UMMA 256x256
# over an SM pair, 128x256 per SM).
GPU_TILES = ((256.0, 128.0), (128.0, 256.0), (256.0, 64.0), (64.0, 256.0), (128.0, 128.0),
             (128.0, 64.0), (64.0, 128.0), (64.0, 64.0))

# Operand feed of a tile from L2: per k-step a tm x tn tile loads (tm + tn) elements of A and B
# for tm tn MACs, so it sustains the SM's full matrix rate only while tm tn / (tm + tn) (MAC per
# loaded element) is at least the SM's MAC rate over its share of L2 read bandwidth. A100: L2
# read bandwidth 5120 B/clk (NVIDIA A100 Tensor Core GPU Architecture whitepaper, 2020, p. 35)
# over 108 SMs = 47.4 B = 23.7 16-bit elements per SM per clock, against 1024 dense FP16 MAC per
# SM per clock (whitepaper Table 1: 312 TFLOPS / (108 SMs x 1.41 GHz x 2)): 43.2 MAC per element.
# We take the same balance on every GPU (V100: 2048 B/clk over 80 SMs against 512 FP16 MAC/clk:
# 40 MAC per element, within 8%; an FP8 engine doubles the MAC rate and halves the bytes per
# element, so the ratio holds). Tiles of 128 x 64 and up clear it (42.7 to 85 MAC per element,
# 128 x 64 at 99%); 64 x 64 (32) runs at 74% of the SM's rate, and a tile clipped to a thin
# matrix (a few rows of A) lower still: why cuBLAS prefers large tiles and why narrow GEMMs
# do not reach the best-GEMM rate.
GPU_TILE_FEED_RIDGE = 1024.0 / (5120.0 / 108.0 / 2.0)


@jax.custom_jvp
def ceil_straight_through(x):
    """ceil(x), differentiated as x (straight-through).

    The value keeps the exact step of a discrete count (tiles, waves); the derivative is that of
    the continuous count it rounds up, so a gradient sees the average trend (more work, more
    time) instead of 0 almost everywhere and an undefined jump at integers. Finite everywhere.
    """
    return jnp.ceil(x)


@ceil_straight_through.defjvp
def _ceil_straight_through_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return jnp.ceil(x), dx


def _quantized_fraction(m, n, groups, cores, tm, tn):
    # `tm` x `tn`: the tile, clipped to the matrix.
    tiles = groups * ceil_straight_through(m / tm) * ceil_straight_through(n / tn)
    waves = ceil_straight_through(tiles / cores)
    # Useful output elements / output elements the waves' slots could compute.
    return _safe_div(groups * m * n, waves * cores * tm * tn)


def _tile_feed_rate(tm, tn):
    # Rate of a `tm` x `tn` tile (clipped to the matrix) relative to the SM's full matrix rate:
    # the L2 feed roofline min(1, MAC per loaded element / GPU_TILE_FEED_RIDGE), over that of
    # the best tile (256 x 128, which the measured best-GEMM fraction `Chip.matmul_fraction`
    # already holds).
    intensity = tm * tn / (tm + tn)
    return jnp.minimum(intensity / GPU_TILE_FEED_RIDGE, 1.0)


def wave_efficiency(chip: Chip, m: ArrayLike, n: ArrayLike,
                    groups: ArrayLike = 1.0) -> Float[Array, "*batch"]:
    """Share of the best-GEMM rate a GEMM's output shape reaches on a GPU after tile choice,
    tile and wave quantization (in (0, 1]; 1 for chips that are not GPUs).

    A GPU GEMM splits its m x n output into thread-block tiles and runs them in waves of one
    tile per core; the last wave's idle cores and the partial edge tiles cost time as if
    computing (NVIDIA DU-09799-001, Sec. 3.1 tile and 3.2 wave quantization). The kernel picks
    its tile among `GPU_TILES` (the CUTLASS / cuBLAS family): a smaller tile wastes less in the
    last wave but loads more operand elements per MAC, and below `GPU_TILE_FEED_RIDGE` MAC per
    element its SM waits on L2 (`_tile_feed_rate`). We take the tile with the highest
    quantized fraction x feed rate, as a well-tuned library's heuristic would (an optimistic
    choice; split-K, which cuBLAS also uses for narrow outputs, is not modelled). The max is
    differentiated as the chosen tile's expression (a subgradient, finite everywhere), and
    `ceil_straight_through` keeps the steps in the value with a trend-following derivative.
    The measured best-GEMM fraction (`Chip.matmul_fraction`) was taken at shapes that fill
    their waves to 97-99% (A100 1024 x 10240: 320 tiles in 3 waves of 108; H100 2048 x 2048:
    128 tiles in 1 wave of 132), which this does not divide out.

    `groups` independent m x n outputs (a batched GEMM) fill the waves together.

    Spatial chips (`core_kind == "spatial"`: systolic arrays fed by a compiler that partitions
    the whole op, TPU / Groq / Cerebras) get 1: no published tile-per-core schedule to model.
    """
    m, n, groups = _f(m), _f(n), _f(groups)
    if chip.core_kind != "simt":
        return jnp.ones(jnp.broadcast_shapes(m.shape, n.shape, groups.shape,
                                             jnp.shape(chip.core_count)), dtype=m.dtype)
    # Every tile of `GPU_TILES` at once, along a trailing axis.
    shape = jnp.broadcast_shapes(m.shape, n.shape, groups.shape, jnp.shape(chip.core_count))
    m, n, groups, cores = (jnp.broadcast_to(x, shape)[..., None]
                           for x in (m, n, groups, chip.core_count))
    tile = jnp.asarray(GPU_TILES, dtype=m.dtype).reshape((1,) * len(shape) + (-1, 2))
    # Tile dims never exceed the matrix (a 1-row GEMV runs 1-row tiles, not padded 256-row ones).
    tm = jnp.minimum(tile[..., 0], jnp.maximum(m, 1.0))
    tn = jnp.minimum(tile[..., 1], jnp.maximum(n, 1.0))
    per_tile = _quantized_fraction(m, n, groups, cores, tm, tn) * _tile_feed_rate(tm, tn)
    return jnp.max(per_tile, axis=-1)


# Block-scaled FP4 GEMMs on a GPU's FP4 engine run in waves of one fixed tile per core, not in
# the 16-bit tile family: M 128 x N 256, the tile of the measured kernel (vLLM's SM100 NVFP4
# CUTLASS GEMM, data/gemm_kernels.csv), whose time is flat from M = 1 to 512 at N = 6144 (one
# wave of 4 x 24 tiles on the measured B200's 148 SMs; a 64-row tile would double it at M = 512)
# and whose rows below 128 are padded. Each wave is its K-loop at the engine's rate plus a fixed
# time (the pipeline fill and drain, the epilogue): with a K-loop 4x shorter than the 16-bit
# engine's, that time is a large share of a wave at K = 4096 and a small one at the K of large
# training GEMMs. The 16-bit and FP8 engines' tile family carries no such time (on Blackwell it
# comes out 17-24% fast at K = 4096 against measured kernels), so below K of about 1,400 an FP4
# product comes out slower than the same product in 16 bits (K = 512: 2.2x at 16,384^2 on
# B200), where the real kernels pay their fixed times too.
BLOCK_SCALED_TILE = (128.0, 256.0)
# The fixed time in clock cycles: fitted to the same kernel's table over M = 1 ... 16,384 with
# the B200's K-loop at its 16-bit engine's sustained share (`Chip.fp4_efficiency` 1: one K
# cannot tell the two apart, and a rate is taken to be what the engine sustains) by
# `dse.calibration.fit_fp4_gemm` (on the preset's 144 cores): 8155 cycles, 4.15 us at B200's
# clock (5.2 us once divided by its sustained fraction, as every GEMM time is), the table within
# 9.3% at the median. tests/test_precision.py checks that the fit still gives the stored value.
FP4_WAVE_CYCLES = 8155.0


def block_scaled_fp4_time(chip: Chip, m: ArrayLike, n: ArrayLike, k: ArrayLike,
                          groups: ArrayLike = 1.0,
                          wave_cycles: ArrayLike = FP4_WAVE_CYCLES) -> Float[Array, "*batch"]:
    """Core time of an m x n x k GEMM on a GPU's FP4 engine, s, before the chip's sustained
    fraction (`matrix_efficiency`): waves of `BLOCK_SCALED_TILE` tiles, one per core (the N side
    clipped to a narrower matrix, the M side padded to 128 rows), each its K-loop at the
    engine's per-core rate (`matrix_rate`) plus `wave_cycles` at the chip's clock. `groups`
    independent m x n outputs (a batched GEMM along k) share the waves."""
    m, n, k, groups = (_f(x) for x in (m, n, k, groups))
    tm, tile_n = BLOCK_SCALED_TILE
    tn = jnp.minimum(tile_n, jnp.maximum(n, 1.0))
    tiles = groups * ceil_straight_through(m / tm) * ceil_straight_through(n / tn)
    waves = ceil_straight_through(tiles / chip.core_count)
    # `ratio`: a chip's FP4 rate squared overflows float32 in the plain quotient's derivative.
    tile_flops = 2.0 * tm * tn * _safe_div(k, groups)
    k_loop = ratio(tile_flops * chip.core_count, matrix_rate(chip, "fp4"))
    return waves * (k_loop + ratio(wave_cycles, chip.clock_hz))


def gemm_traffic_elements(m, n, k, sram_elements, weight_resident_fraction=0.0):
    """HBM reads and writes (elements) of C = A B with the best output-stationary tiling.

    A is m x k (activations), B is k x n (weights), C is m x n. With an a x b block of C
    resident, A is read n / b times and B m / a times; C is written once. The tile obeys
    a <= m, b <= n, a b <= S: the short side takes min(short, sqrt(S)) and the long side
    min(long, S / short_tile). Traffic is continuous and non-increasing in S and never below the
    compulsory m k + k n + m n (Kwasniewski et al. 2019, Thm. 1).

    `weight_resident_fraction` of B lives in SRAM across calls (weight-stationary chips): that
    share of B costs no HBM traffic and A needs no re-read against it.

    **Returns:** (a_elements, b_elements, c_elements) moved to or from HBM.
    """
    short = jnp.minimum(m, n)
    long = jnp.maximum(m, n)
    t_short = jnp.minimum(short, jnp.sqrt(sram_elements))
    t_long = jnp.minimum(long, _safe_div(sram_elements, t_short))
    m_tile = jnp.where(m <= n, t_short, t_long)
    n_tile = jnp.where(m <= n, t_long, t_short)
    f = weight_resident_fraction
    # Ratios are safe for an empty operand (m or n = 0: no traffic, not 0/0).
    a_elems = m * k * ((1.0 - f) * _safe_div(n, n_tile) + f)
    b_elems = (1.0 - f) * k * n * _safe_div(m, m_tile)
    c_elems = m * n
    return a_elems, b_elems, c_elems


def gemm(chip: Chip, m: ArrayLike, n: ArrayLike, k: ArrayLike, *,
         bytes_per_element: ArrayLike = 2.0, weight_bytes_per_element: ArrayLike | None = None,
         output_bytes_per_element: ArrayLike | None = None, engine: str = "bf16",
         weight_convert_flops: ArrayLike = 0.0, input_convert_flops: ArrayLike = 0.0,
         weight_resident_fraction: ArrayLike = 0.0, output_groups: ArrayLike = 1.0,
         smooth: bool = False, calibration: Calibration = DEFAULT,
         fp4_wave_cycles: ArrayLike = FP4_WAVE_CYCLES) -> OpCost:
    """One matrix product C (m x n) = A (m x k) B (k x n) on one chip.

    **Arguments:**

    - `chip`: the `Chip` (a batch of chips broadcasts).
    - `m`, `n`, `k`: matrix dimensions (A rows = tokens, n = output features, k = reduction).
    - `bytes_per_element`: width of A elements (and of C unless given), bytes.
    - `weight_bytes_per_element`: width of B (the weights) if different (int8 weights: 1).
    - `output_bytes_per_element`: width of C if different (an FP8 GEMM writes 16-bit C: 2).
    - `engine` (static): the matrix engine that multiplies ("bf16", "fp8", "fp6", "fp4",
      "int8"; see `matrix_rate`).
    - `weight_convert_flops`: vector FLOP per element of B each time the kernel loads it
      (in-kernel de-quantization of weights stored narrower than the engine's format: 0 when
      native).
    - `input_convert_flops`: vector FLOP per element of A (quantization of the activation to
      the engine's format, fused into the kernel that produces it).
    - `weight_resident_fraction`: share of B held in SRAM across calls, in [0, 1].
    - `output_groups`: the product is this many independent m x n outputs, each reducing
      k / output_groups (a batched GEMM whose batch runs along k, as the weight-gradient product
      of a batched GEMM stacked along M): their tiles share the waves (`wave_efficiency`).
    - `smooth`: smooth roofline (see `roofline`).
    - `calibration`: the model's fitted factors (`dse.models.Calibration`; default `DEFAULT`).
    - `fp4_wave_cycles`: fixed clock cycles of each wave of an FP4 product on a GPU's FP4 engine
      (default the fitted `FP4_WAVE_CYCLES`).

    On a GPU with an FP4 engine, an FP4 product runs in waves of block-scaled tiles with a fixed
    time per wave (`block_scaled_fp4_time`) instead of the 16-bit tile family.

    **Returns:** `OpCost` (FLOP, bytes, seconds). `flops` counts the matrix FLOPs only; the
    conversions add vector time to `compute_time` (fused kernels: no HBM traffic of their own).
    """
    wbytes = bytes_per_element if weight_bytes_per_element is None else weight_bytes_per_element
    cbytes = bytes_per_element if output_bytes_per_element is None else output_bytes_per_element
    m, n, k = (_f(x) for x in (m, n, k))
    flops = 2.0 * m * n * k
    # Tiles are counted in elements of the mean width of the three operands held on chip.
    sram_elements = chip.sram_bytes / ((bytes_per_element + wbytes + cbytes) / 3.0)
    a, b, c = gemm_traffic_elements(m, n, k, sram_elements, weight_resident_fraction)
    hbm_bytes = a * bytes_per_element + c * cbytes + b * wbytes
    active = jnp.where(flops > 0, 1.0, 0.0)
    # Idle cores of the last wave and padded edge tiles take core-time as useful work does.
    occupied_flops = _safe_div(flops, wave_efficiency(chip, m, n, output_groups))
    compute_time, memory_time = _times(chip, occupied_flops, hbm_bytes, calibration, active,
                                       engine=engine)
    if engine == "fp4" and chip.core_kind == "simt":
        blocked = _matrix_time(chip, calibration, active, block_scaled_fp4_time(
            chip, m, n, k, output_groups, fp4_wave_cycles))
        compute_time = jnp.where(chip.rate("fp4") > 0.0, blocked, compute_time)
    # A weight is de-quantized each time it is loaded (at least once per call, resident or not).
    convert = (weight_convert_flops * jnp.maximum(b, k * n) + input_convert_flops * m * k)
    compute_time = compute_time + active * convert / chip.vector_flops
    return OpCost(flops, hbm_bytes, compute_time, memory_time,
                  roofline(compute_time, memory_time, smooth))


def _attention_shape(heads, kv_heads, q_len, kv_len, causal):
    # Causal queries sit at the end of the context: query i (of q_len) sees kv_len - q_len + i + 1
    # keys, kv_len - (q_len - 1) / 2 on average.
    attended = jnp.where(causal, kv_len - 0.5 * (q_len - 1.0), kv_len)
    return jnp.maximum(attended, 1.0)


def attention(chip: Chip, batch: ArrayLike, heads: ArrayLike, kv_heads: ArrayLike,
              q_len: ArrayLike, kv_len: ArrayLike, head_dim: ArrayLike, *, causal: bool = True,
              bytes_per_element: ArrayLike = 2.0, kv_convert_flops: ArrayLike = 0.0,
              smooth: bool = False, calibration: Calibration = DEFAULT) -> OpCost:
    """Fused (FlashAttention-style) attention forward: softmax(Q K^T) V on one chip.

    FLOPs: QK^T and AV, 4 * batch * heads * q_len * attended * head_dim (Dao et al. 2022 count;
    `attended` = kv_len, or the causal mean). HBM traffic: Q read and O written once; K and V
    streamed once per block of query rows that fits on chip (FlashAttention-2 loop order, Dao
    2023; block rows = S / (4 head_dim) as in Dao et al. 2022, Alg. 1). GQA / MQA: the
    heads / kv_heads query heads that share a KV head are processed together, so K and V are read
    per KV head, not per query head.
    Compute: `_attention_compute_time` (the kernel's rate from the chip's best-GEMM rate and the
    attention fields of the `Calibration`, fitted to published FlashAttention-2/3/4 throughputs
    by `dse.calibration.fit_attention_efficiency`).

    **Arguments:**

    - `chip`: the `Chip`.
    - `batch`: sequences.
    - `heads`, `kv_heads`: query heads and KV heads on this chip.
    - `q_len`: query tokens per sequence (prompt length in prefill, 1 in decode).
    - `kv_len`: keys per sequence (context length).
    - `head_dim`: width of one head.
    - `causal`: causal mask (halves the work of a square prefill).
    - `bytes_per_element`: width of Q, K, V, O elements, bytes (the KV-cache width in decode).
    - `kv_convert_flops`: vector FLOP per K and V element read, to de-quantize a KV cache
      stored narrower than the 16-bit products the kernel computes (fused: no extra traffic).
    - `smooth`, `calibration`: as in `gemm`.

    **Returns:** `OpCost`.
    """
    batch, heads, kv_heads, q_len, kv_len, head_dim = (
        _f(x) for x in (batch, heads, kv_heads, q_len, kv_len, head_dim))
    attended = _attention_shape(heads, kv_heads, q_len, kv_len, causal)
    flops = 4.0 * batch * heads * q_len * attended * head_dim
    group_rows = q_len * heads / kv_heads  # query rows sharing one KV head
    block_rows = chip.sram_bytes / bytes_per_element / (4.0 * head_dim)
    kv_passes = jnp.maximum(1.0, group_rows / block_rows)
    # Causal blocks above the diagonal are skipped; an empty context (kv_len 0) reads nothing.
    kv_fraction = _safe_div(attended, kv_len)
    q_o = 2.0 * batch * heads * q_len * head_dim
    k_v = 2.0 * batch * kv_heads * kv_len * head_dim * jnp.maximum(kv_passes * kv_fraction, 1.0)
    hbm_bytes = (q_o + k_v) * bytes_per_element
    active = jnp.where(flops > 0, 1.0, 0.0)
    _, memory_time = _times(chip, flops, hbm_bytes, calibration, active)
    compute_time = _attention_compute_time(chip, flops, q_o * bytes_per_element, head_dim,
                                           attended, causal, calibration, False, active)
    compute_time = compute_time + active * kv_convert_flops * k_v / chip.vector_flops
    return OpCost(flops, hbm_bytes, compute_time, memory_time,
                  roofline(compute_time, memory_time, smooth))


def attention_backward(chip: Chip, batch: ArrayLike, heads: ArrayLike, kv_heads: ArrayLike,
                       q_len: ArrayLike, kv_len: ArrayLike, head_dim: ArrayLike, *,
                       causal: bool = True, bytes_per_element: ArrayLike = 2.0,
                       smooth: bool = False, calibration: Calibration = DEFAULT) -> OpCost:
    """Fused attention backward (FlashAttention-2) on one chip.

    FLOPs: 2.5 x forward (five matrix products instead of two, the scores recomputed;
    Dao 2023, Sec. 3.2 / benchmark FLOP count). HBM traffic (Dao 2023, Alg. 2 loop order): K, V
    read and dK, dV written once per KV block pass; Q, O, dO read and dQ read and written once per
    block of keys that fits on chip (block = S / (4 head_dim) rows).
    Compute: as `attention`, at the backward kernel's rate, with the per-key-block I/O (K, V
    read, dK, dV written per query head) as the exposed traffic.

    **Arguments:** as `attention`.

    **Returns:** `OpCost`.
    """
    batch, heads, kv_heads, q_len, kv_len, head_dim = (
        _f(x) for x in (batch, heads, kv_heads, q_len, kv_len, head_dim))
    attended = _attention_shape(heads, kv_heads, q_len, kv_len, causal)
    flops = 2.5 * 4.0 * batch * heads * q_len * attended * head_dim
    block_cols = chip.sram_bytes / bytes_per_element / (4.0 * head_dim)
    q_passes = jnp.maximum(1.0, attended / block_cols)
    kv = 4.0 * batch * kv_heads * kv_len * head_dim          # K, V read; dK, dV written
    q_side = 5.0 * batch * heads * q_len * head_dim * q_passes  # Q, O, dO read; dQ read + write
    hbm_bytes = (kv + q_side) * bytes_per_element
    active = jnp.where(flops > 0, 1.0, 0.0)
    _, memory_time = _times(chip, flops, hbm_bytes, calibration, active)
    column_io = 4.0 * batch * heads * kv_len * head_dim * bytes_per_element
    compute_time = _attention_compute_time(chip, flops, column_io, head_dim, attended, causal,
                                           calibration, True, active)
    return OpCost(flops, hbm_bytes, compute_time, memory_time,
                  roofline(compute_time, memory_time, smooth))


def elementwise(chip: Chip, elements: ArrayLike, *, flops_per_element: ArrayLike = 1.0,
                bytes_per_element: ArrayLike = 2.0, reads: ArrayLike = 1.0,
                writes: ArrayLike = 1.0, smooth: bool = False,
                calibration: Calibration = DEFAULT) -> OpCost:
    """A memory-bound element-wise op (activation, norm, softmax, residual add) on one chip.

    Work runs on the vector units (`chip.vector_flops`, times `chip.vector_16bit_rate` for
    elements of 2 bytes or fewer); each element is read `reads` times and written `writes`
    times from and to HBM.

    **Arguments:**

    - `chip`: the `Chip`.
    - `elements`: elements of the output tensor.
    - `flops_per_element`: vector FLOP per element.
    - `bytes_per_element`: element width, bytes.
    - `reads`, `writes`: HBM passes per element (a residual add reads 2, writes 1).
    - `smooth`, `calibration`: as in `gemm`.

    **Returns:** `OpCost`.
    """
    elements = _f(elements)
    flops = elements * flops_per_element
    hbm_bytes = elements * (reads + writes) * bytes_per_element
    active = jnp.where(elements > 0, 1.0, 0.0)
    # 16-bit (or narrower) data runs at the vector units' 16-bit rate.
    rate = jnp.where(jnp.asarray(bytes_per_element) <= 2.0, chip.vector_16bit_rate, 1.0)
    compute_time, memory_time = _times(chip, flops, hbm_bytes, calibration, active, matrix=False,
                                       vector_rate=rate)
    return OpCost(flops, hbm_bytes, compute_time, memory_time,
                  roofline(compute_time, memory_time, smooth))


def elementwise_ops(chip: Chip, rows, *, bytes_per_element: ArrayLike = 2.0,
                    smooth: bool = False, calibration: Calibration = DEFAULT) -> list[OpCost]:
    """`elementwise` of each (elements, flops_per_element, reads, writes) row in `rows`, as
    one stacked call (`stacked_calls`); the other arguments are shared. **Returns:** a list of
    `OpCost`, one per row."""
    return stacked_calls(lambda e, f, r, w: elementwise(
        chip, e, flops_per_element=f, bytes_per_element=bytes_per_element, reads=r, writes=w,
        smooth=smooth, calibration=calibration), rows)
