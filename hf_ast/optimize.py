"""Low-precision inference in one call: `optimize_for_inference(model, precision="bf16" | "int8")`.

What each precision does, and why (measured on a 2-core AVX-512-bf16 CPU, base geometry; see
benchmarks/results_cpu.md for the figures):

- `"bf16"`: every weight in bfloat16 (`model.to(torch.bfloat16)`); the model casts its input to
  the weight dtype, sdpa runs its bf16 kernel, and LayerNorm/softmax accumulate in float32
  inside their kernels. No extra package, no compilation, works on any device; the CPU's bf16
  matmul peak is about 2.3x its fp32 peak. The same model comes from
  `from_pretrained(path, dtype=torch.bfloat16)`. On a CPU where oneDNN has no bf16 matmul (x86
  without AVX-512, e.g. an AVX2-only CPU) the model stays float32: there hf-ast's bf16 Linear
  layers and patch convolution compute in fp32 anyway (torch's bf16 fallback gemm is 6x slower
  than fp32), so bf16 weights only add casts: about 0.95x the speed of the same model in fp32.
  `model.inference_precision` says which precision the returned model runs in.
- `"int8"`: dynamic int8 quantisation of the encoder's Linear layers with torchao
  (`Int8DynamicActivationInt8WeightConfig`: int8 weights per output channel, activations
  quantised per token at run time). The classification head and the patch convolution stay in
  float32 (they are cheap and the head sets the scores). torchao replaces
  `torch.ao.quantization.quantize_dynamic`, which torch deprecates. Eager, it runs about as fast
  as bf16; `compile=True` lets inductor fuse the activation quantisation into the int8 matmuls
  (about 1.25x faster again), at the price of a first call that compiles for about a minute on
  2 CPU cores and once more per new input shape: worth it for a server, not for a script.
  On a CPU without VNNI (AVX2-only, or oneDNN capped below AVX-512 VNNI) the int8 matmul under it,
  `torch._int_mm`, adds pairs of products in saturating 16-bit adds, so most sums of full-range
  int8 values come out wrong. A one-time probe finds this; int8 then quantises to [-64, 63]
  (torchao's `reduce_range`), where no pair can saturate: the sums are exact again, with the same
  kernels and speed, one bit coarser. On the benchmark's trained model under
  ONEDNN_MAX_CPU_ISA=AVX2 this took top-1 agreement with fp32 from 0.98 to 0.997 and the logit
  drift from 0.073 to 0.032. A torchao without `reduce_range` gets an error naming the way out.
- `"fp32"`: unchanged weights (optionally compiled).

`compile=True` adds `torch.compile` to any precision (`model.compile()`, in place: the object
and its type stay the same). Agreement with fp32 is tested in tests/test_low_precision.py and
measured on a trained model (top-1 agreement, mAP drop, logit drift) by
benchmarks/bench_low_precision.py.
"""

import functools
import logging

import torch
from torch import nn

from . import modeling_hf_ast

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")

# torchao's int8 ranges: full, and `reduce_range`'s (quant_min // 2, quant_max // 2). oneDNN's s8s8
# gemm without VNNI adds pairs of u8 * s8 products (the activation shifted by +128) in saturating
# int16 (vpmaddubsw): a pair reaches 2 * 255 * 128 > 2**15 - 1 at full range, at most
# 2 * 191 * 64 < 2**15 with both operands in [-64, 63].
INT8_FULL_RANGE = (-128, 127)
INT8_REDUCED_RANGE = (-64, 63)


def _is_encoder_linear(module: nn.Module, name: str) -> bool:
    # Only the transformer layers: the head (`classifier.*`) sets the scores and costs nothing.
    return isinstance(module, nn.Linear) and ".encoder.layer." in f".{name}"


def _on_cpu(model: nn.Module) -> bool:
    return next(model.parameters()).device.type == "cpu"


@functools.cache
def int_mm_inexact(low: int, high: int) -> bool:
    """Whether `torch._int_mm` on the CPU gets sums of int8 operands in `[low, high]` wrong, probed once per range.

    `torch._int_mm` is the int8 matmul under torchao's dynamic int8. The reference is the same
    product in int64; the operands are random in the range, with rows and columns at its ends.
    Where `torch._int_mm` does not run on the CPU at all there is nothing to correct: False.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(low, high + 1, (32, 256), dtype=torch.int8, generator=generator)
    b = torch.randint(low, high + 1, (256, 32), dtype=torch.int8, generator=generator)
    a[0], a[1], b[:, 0], b[:, 1] = high, low, high, low
    try:
        return not torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        logger.info(f"torch._int_mm does not run on this CPU ({error}); torchao chooses its own path")
        return False


def _int8_reduce_range(config_class) -> bool:
    """Whether int8 on the CPU must quantise to `INT8_REDUCED_RANGE` for exact matmuls; raises where none is exact."""
    if not int_mm_inexact(*INT8_FULL_RANGE):
        return False
    # torchao's own should_reduce_range() reads the CPU's VNNI flag, which misses ONEDNN_MAX_CPU_ISA:
    # the probe asks the kernel itself.
    problem = (
        'precision="int8" would compute wrong values on this CPU: its int8 matmul (torch._int_mm) gets sums of '
        "full-range int8 values wrong, as CPUs without VNNI do (AVX2-only, or ONEDNN_MAX_CPU_ISA below AVX-512 VNNI)"
    )
    if "reduce_range" not in getattr(config_class, "__dataclass_fields__", {}):
        raise RuntimeError(f"{problem}, and this torchao cannot quantise to a range that stays exact (reduce_range): "
                           'upgrade torchao, or use precision="bf16" or "fp32".')
    if int_mm_inexact(*INT8_REDUCED_RANGE):
        raise RuntimeError(f'{problem}, even in the reduced range [-64, 63]: use precision="bf16" or "fp32".')
    logger.warning(
        "this CPU's int8 matmul saturates full-range int8 sums (no VNNI): int8 quantises to [-64, 63] "
        "(torchao's reduce_range), exact but one bit coarser than on a CPU with VNNI"
    )
    return True


def quantize_int8(model: nn.Module) -> nn.Module:
    """torchao dynamic int8 (int8 weights, per-token int8 activations) on the encoder's Linear layers, in place.

    On a CPU whose int8 matmul saturates full-range sums (no VNNI) it quantises to [-64, 63] instead.
    """
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise ImportError(
            'precision="int8" needs torchao (pip install torchao, or pip install "hf-ast[export]"); '
            'precision="bf16" needs nothing extra.'
        ) from None
    config = Int8DynamicActivationInt8WeightConfig()
    if _on_cpu(model) and _int8_reduce_range(Int8DynamicActivationInt8WeightConfig):
        config = Int8DynamicActivationInt8WeightConfig(reduce_range=True)
    quantize_(model, config, filter_fn=_is_encoder_linear)
    return model


def bf16_slower_here(model: nn.Module) -> bool:
    """Whether bf16 weights would run slower than fp32: on a CPU where oneDNN has no bf16 matmul (e.g. AVX2-only)."""
    return _on_cpu(model) and not modeling_hf_ast._onednn_runs(torch.bfloat16, "none")


def optimize_for_inference(model: nn.Module, precision: str = "bf16", compile: bool = False, **compile_kwargs):
    """Prepare a model for fast inference, in place, and return it (eval mode, same class).

    Args:
        model: an `HfAstForAudioClassification` or `HfAstModel` (any module works for bf16).
        precision: `"bf16"` (bfloat16 weights, the default), `"int8"` (torchao dynamic int8
            Linear layers) or `"fp32"`.
        compile: `torch.compile` the model in place (`model.compile()`); default False, so the
            first call costs nothing extra. Pays off for int8 (see above), not measurably for bf16.
        compile_kwargs: passed to `torch.compile` (e.g. `mode="max-autotune"`, `dynamic=True`).

    Inputs can stay float32: the model casts `input_values` to its weight dtype. Logits come out in
    the weight dtype (bfloat16 for `"bf16"`); `.float()` them before thresholding if you like.

    `"bf16"` on a CPU without a oneDNN bf16 matmul (AVX2-only) gives a float32 model, which is
    faster there (`model.to(torch.bfloat16)` still halves the memory); the returned model's
    `inference_precision` is the precision it runs in.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {', '.join(PRECISIONS)}.")
    model.eval()
    if precision == "bf16" and bf16_slower_here(model):
        logger.warning(
            'precision="bf16": oneDNN has no bf16 matmul on this CPU (an x86 CPU without AVX-512, such as an '
            "AVX2-only one), so bf16 weights would compute in float32 with casts around every layer, slower than "
            "float32: the model runs in float32 (model.inference_precision == 'fp32'). model.to(torch.bfloat16) "
            "halves its memory if that is what you need."
        )
        precision = "fp32"
        model.to(torch.float32)  # exact from bf16 weights, and the fast kernels here
    if precision == "bf16":
        model.to(torch.bfloat16)
    elif precision == "int8":
        if next(model.parameters()).dtype != torch.float32:
            raise ValueError("int8 quantisation starts from float32 weights; load the model without dtype=.")
        quantize_int8(model)
    if compile:
        model.compile(**compile_kwargs)
    model.inference_precision = precision
    logger.info(f"model prepared for inference: precision {precision}, compiled {compile}")
    return model


__all__ = ["PRECISIONS", "bf16_slower_here", "int_mm_inexact", "optimize_for_inference", "quantize_int8"]
