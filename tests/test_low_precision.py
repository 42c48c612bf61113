"""optimize_for_inference: bf16 and int8 stay close to fp32 on a tiny model (agreement bounds, not speed)."""

import copy
import dataclasses

import pytest
import torch
from conftest import randomize_, tiny_config, tiny_model

from hf_ast import (
    HfAstFeatureExtractor,
    HfAstForAudioClassification,
    modeling_hf_ast,
    optimize,
    optimize_for_inference,
)


def inputs(batch=16, frames=128, seed=0):
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed)) * 0.5


def reference_and(precision, **kwargs):
    # std 0.05: weights of a trained model's scale (the conftest default of 0.2 saturates the tiny net).
    model = randomize_(HfAstForAudioClassification(tiny_config(num_labels=10)), std=0.05)
    for module in model.modules():  # LayerNorm scales near 1, as after training
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.data.add_(1.0)
    low = optimize_for_inference(copy.deepcopy(model), precision, **kwargs)
    x = inputs()
    with torch.inference_mode():
        return model(x).logits, low(x).logits.float(), low


def assert_close_to_fp32(low, fp32):
    """Logits within 5% of their scale, and the same top-1 wherever fp32's top-1 leads by 10% of it."""
    scale = fp32.abs().max()
    assert (low - fp32).abs().max() <= 0.05 * scale
    top2 = fp32.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1 * scale  # on a random net some rows are near ties
    assert clear.sum() >= 4
    assert torch.equal(low[clear].argmax(-1), fp32[clear].argmax(-1))
    assert (low - fp32).abs().max() > 0  # it really ran in low precision


def cpu_has_bf16_matmul() -> bool:
    """Whether oneDNN builds a bf16 matmul here (AVX-512 and up), asked of torch's own oneDNN linear op."""
    x = torch.ones(2, 8, dtype=torch.bfloat16)
    try:
        torch.ops.mkldnn._linear_pointwise(x, torch.ones(4, 8, dtype=torch.bfloat16), None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return True


def test_bf16_keeps_the_class_type_and_casts_weights():
    if not cpu_has_bf16_matmul():
        pytest.skip("no bf16 matmul on this CPU: bf16 keeps float32 (test_bf16_without_bf16_matmul_keeps_fp32)")
    fp32, bf16, model = reference_and("bf16")
    assert type(model).__name__ == "HfAstForAudioClassification"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.inference_precision == "bf16"
    assert_close_to_fp32(bf16, fp32)  # bf16 keeps 8 mantissa bits


@pytest.fixture
def no_bf16_matmul(monkeypatch):
    """oneDNN's probe reports no bf16 matmul (as on an AVX2-only CPU); its caches start and end empty."""
    caches = (modeling_hf_ast._onednn_has_avx512, modeling_hf_ast._onednn_fp32_faster)
    for cache in caches:
        cache.cache_clear()
    probe = modeling_hf_ast._onednn_runs
    monkeypatch.setattr(
        modeling_hf_ast, "_onednn_runs", lambda dtype, form: dtype != torch.bfloat16 and probe(dtype, form)
    )
    yield
    for cache in caches:
        cache.cache_clear()


def test_bf16_without_bf16_matmul_keeps_fp32(no_bf16_matmul, caplog):
    model = tiny_model(seed=2)
    x = inputs(batch=2)
    # As loaded, or loaded with dtype=torch.bfloat16: either way the model comes back in float32.
    for start in (model, copy.deepcopy(model).to(torch.bfloat16)):
        expected_model = copy.deepcopy(start).float()
        with caplog.at_level("WARNING", logger="hf_ast.optimize"):
            fast = optimize_for_inference(copy.deepcopy(start), "bf16")
        assert "no bf16 matmul" in caplog.text and "runs in float32" in caplog.text
        caplog.clear()
        assert fast.inference_precision == "fp32"
        assert all(p.dtype == torch.float32 for p in fast.parameters())
        with torch.inference_mode():
            torch.testing.assert_close(fast(x).logits, expected_model(x).logits, atol=0, rtol=0)


def int_mm_is_exact() -> bool:
    """Whether torch._int_mm, the CPU matmul under torchao's dynamic int8, gives exact int32 sums here.

    Without VNNI (AVX2-only CPUs, or ONEDNN_MAX_CPU_ISA=AVX2) oneDNN's s8s8 gemm pairs products in
    saturating int16 adds (vpmaddubsw), so most sums of full-range int8 values come out wrong.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (32, 256), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (256, 32), dtype=torch.int8, generator=generator)
    try:
        return torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
    except RuntimeError:  # no CPU int8 matmul in this torch: let the test show what happens
        return True


def test_int8_quantizes_only_the_encoder_linears():
    pytest.importorskip("torchao")
    fp32, int8, model = reference_and("int8", compile=False)
    encoder_weight = model.audio_spectrogram_transformer.encoder.layer[0].intermediate.dense.weight
    assert "Int8" in type(encoder_weight).__name__
    weight = model.classifier.dense.weight
    assert type(weight) is torch.nn.Parameter and weight.dtype == torch.float32
    assert model.inference_precision == "int8"
    # Full range where torch._int_mm sums exactly; [-64, 63] where it saturates (no VNNI).
    largest = encoder_weight.qdata.abs().max().item()
    assert largest > 64 if int_mm_is_exact() else largest <= 64
    assert_close_to_fp32(int8, fp32)


def test_int8_without_exact_int_mm_reduces_the_range_or_refuses(monkeypatch):
    pytest.importorskip("torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    inexact = {(-128, 127): True, (-64, 63): False}  # as torch._int_mm answers without VNNI
    monkeypatch.setattr(optimize, "int_mm_inexact", lambda low, high: inexact[low, high])
    model = optimize_for_inference(tiny_model(seed=3), "int8")
    weights = [layer.intermediate.dense.weight for layer in model.audio_spectrogram_transformer.encoder.layer]
    assert all(weight.reduce_range for weight in weights)
    assert max(weight.qdata.max().item() for weight in weights) <= 63
    assert min(weight.qdata.min().item() for weight in weights) >= -64

    @dataclasses.dataclass
    class OldConfig:  # a torchao from before reduce_range
        granularity: object = None

    with pytest.raises(RuntimeError, match=r'VNNI.*upgrade torchao, or use precision="bf16" or "fp32"'):
        optimize._int8_reduce_range(OldConfig)
    inexact[-64, 63] = True
    with pytest.raises(RuntimeError, match=r'int8 matmul \(torch._int_mm\).*VNNI.*precision="bf16" or "fp32"'):
        optimize._int8_reduce_range(Int8DynamicActivationInt8WeightConfig)


def test_low_precision_keeps_padding_free_batches_exact_per_clip():
    model = optimize_for_inference(tiny_model(), "bf16")
    extractor = HfAstFeatureExtractor(max_length=128)
    clips = [torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1 for n in (4800, 19200)]
    batch = extractor(clips, sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="pt")
    with torch.inference_mode():
        batched = model(**batch).logits
        alone = extractor(clips[0], sampling_rate=16000, padding="longest", return_tensors="pt")
        # Same bf16 arithmetic on the same tokens: equal up to bf16 rounding of the batched matmuls.
        torch.testing.assert_close(batched[0], model(**alone).logits[0], atol=3e-2, rtol=0)


def test_rejects_unknown_precision():
    with pytest.raises(ValueError, match="fp16|choose"):
        optimize_for_inference(tiny_model(), "fp16")
