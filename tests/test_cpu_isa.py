"""CPU inference where oneDNN has fewer kernels: an AVX2-only CPU, imitated with ONEDNN_MAX_CPU_ISA=AVX2.

oneDNN and MKL read ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS once, when the process first uses
them, so the capped forwards run in a child process (this file run as a script). The probe and gate
tests swap oneDNN's op for a fake one that fails for chosen (dtype, form) pairs, and the CPU facts
for chosen ones, so they run the same on any machine.
"""

import copy
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from conftest import TINY, randomize_, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import ASTConfig, ASTForAudioClassification

from hf_ast import HfAstForAudioClassification, modeling_hf_ast, optimize_for_inference


def op_calls(fn, name: str) -> int:
    """How many times `fn()` runs the op `name`, counted by torch's profiler (not by our code)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        fn()
    return sum(event.count for event in profiler.key_averages() if event.key == name)


def onednn_calls(fn) -> int:
    return op_calls(fn, "mkldnn::_linear_pointwise")


# -- under ONEDNN_MAX_CPU_ISA=AVX2 ----------------------------------------------------------


def capped_child(directory: str) -> dict:
    """Runs in the capped process: fp32 and bf16 forwards of hf-ast against transformers' fp32, as figures."""
    reference = randomize_(ASTForAudioClassification(ASTConfig(**TINY, num_labels=5)), seed=3)
    reference.save_pretrained(directory)
    x = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(0))
    fp32 = HfAstForAudioClassification.from_pretrained(directory).eval()
    loaded_bf16 = HfAstForAudioClassification.from_pretrained(directory, dtype=torch.bfloat16).eval()
    optimized_bf16 = optimize_for_inference(copy.deepcopy(fp32), "bf16")
    with torch.inference_mode():
        expected = reference(x).logits
        result = {
            "bf16_probes": {
                form: modeling_hf_ast._onednn_runs(torch.bfloat16, form) for form in ("none", "gelu", "add")
            },
            "fp32_fast": modeling_hf_ast._onednn_fast(torch.float32, "none"),
            "scale": expected.abs().max().item(),
            "fp32_diff": (fp32(x).logits - expected).abs().max().item(),
            "fp32_onednn_calls": onednn_calls(lambda: fp32(x)),
            "optimized_bf16_precision": optimized_bf16.inference_precision,
            "optimized_bf16_equals_fp32": torch.equal(optimized_bf16(x).logits, fp32(x).logits),
        }
        logits = loaded_bf16(x).logits
        result["from_pretrained_dtype"] = str(logits.dtype)
        result["from_pretrained_diff"] = (logits.float() - expected).abs().max().item()
        result["from_pretrained_onednn_calls"] = onednn_calls(lambda: loaded_bf16(x))
        result["from_pretrained_slow_conv"] = op_calls(lambda: loaded_bf16(x), "aten::_slow_conv2d_forward")
    return result


def int8_figures() -> dict:
    """int8 as optimize_for_inference makes it here, and as torchao's full range would be, against fp32."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return {}
    from hf_ast import optimize

    # std 0.05 and LayerNorm scales near 1: a trained model's scale (see tests/test_low_precision.py).
    model = randomize_(HfAstForAudioClassification(tiny_config(num_labels=10)), seed=0, std=0.05)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.data.add_(1.0)
    x = torch.randn(16, 128, 128, generator=torch.Generator().manual_seed(1)) * 0.5
    int8 = optimize_for_inference(copy.deepcopy(model), "int8")
    full_range = copy.deepcopy(model)  # what int8 was before the probe: torchao's full int8 range
    quantize_(full_range, Int8DynamicActivationInt8WeightConfig(), filter_fn=optimize._is_encoder_linear)
    weight = int8.audio_spectrogram_transformer.encoder.layer[0].intermediate.dense.weight
    with torch.inference_mode():
        expected = model(x).logits
        scale = expected.abs().max().item()
        return {
            "int_mm_inexact": {
                "full": optimize.int_mm_inexact(-128, 127), "reduced": optimize.int_mm_inexact(-64, 63)
            },
            "int8_precision": int8.inference_precision,
            "int8_largest_weight": weight.qdata.abs().max().item(),
            "int8_drift": (int8(x).logits - expected).abs().max().item() / scale,
            "int8_full_range_drift": (full_range(x).logits - expected).abs().max().item() / scale,
        }


def test_avx2_cap_runs_bf16_and_fp32_and_matches_transformers():
    if modeling_hf_ast._onednn_linear_op() is None:
        pytest.skip("this torch build has no oneDNN linear kernel: the cap has nothing to cap")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    env.pop("HF_AST_ONEDNN_LINEAR", None)
    with tempfile.TemporaryDirectory() as directory:
        child = subprocess.run([sys.executable, __file__, directory], env=env, capture_output=True, text=True,
                               timeout=300, cwd=os.path.dirname(__file__))
    assert child.returncode == 0, child.stderr[-4000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])

    # The cap took effect: oneDNN has no bf16 matmul below AVX-512, and its AVX2 fp32 is not used.
    assert result["bf16_probes"] == {"none": False, "gelu": False, "add": False}
    assert result["fp32_fast"] is False and result["fp32_onednn_calls"] == 0
    # fp32 runs MKL's F.linear: transformers' arithmetic (tolerance of tests/test_modeling.py).
    assert result["fp32_diff"] < 1e-5
    # optimize_for_inference(model, "bf16") keeps the fp32 model: bf16 would only be slower here.
    assert result["optimized_bf16_precision"] == "fp32" and result["optimized_bf16_equals_fp32"]
    # A model loaded in bf16 runs (it crashed here before), bf16 logits close to fp32, no slow bf16 convolution.
    assert result["from_pretrained_dtype"] == "torch.bfloat16"
    assert result["from_pretrained_onednn_calls"] == 0 and result["from_pretrained_slow_conv"] == 0
    assert 0 < result["from_pretrained_diff"] < 0.02 * result["scale"], result


def test_avx2_cap_int8_quantises_to_a_range_the_cpu_sums_exactly():
    pytest.importorskip("torchao")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN: the cap has nothing to cap")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    child = subprocess.run([sys.executable, __file__, "-", "int8"], env=env, capture_output=True, text=True,
                           timeout=300, cwd=os.path.dirname(__file__))
    assert child.returncode == 0, child.stderr[-4000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])

    # Without VNNI torch._int_mm saturates full-range sums but sums [-64, 63] exactly.
    assert result["int_mm_inexact"] == {"full": True, "reduced": False}
    assert result["int8_precision"] == "int8" and result["int8_largest_weight"] <= 64
    # Reduced-range int8 is within the bound of tests/test_low_precision.py; the saturating full range
    # drifts several times further (0.19 against 0.03 of the logits' scale on this model).
    assert result["int8_drift"] < 0.05 and result["int8_full_range_drift"] > 2 * result["int8_drift"], result


# -- one failing probe, one pair off --------------------------------------------------------


class FakeOneDnn:
    """Stands in for torch.ops.mkldnn._linear_pointwise: F.linear's values, an error for the `failing` pairs."""

    def __init__(self, failing):
        self.failing = set(failing)
        self.calls = []

    def _run(self, dtype, form, compute):
        self.calls.append((dtype, form))
        if (dtype, form) in self.failing:
            raise RuntimeError("could not create a primitive descriptor for the inner product (fake)")
        return compute()

    def __call__(self, x, weight, bias, attr, scalars, algorithm):
        if attr == "gelu":
            return self._run(
                x.dtype, "gelu", lambda: torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))
            )
        return self._run(x.dtype, "none", lambda: torch.nn.functional.linear(x, weight, bias))

    def binary(self, x, other, weight, bias, attr):
        return self._run(x.dtype, "add", lambda: torch.nn.functional.linear(x, weight, bias) + other)


@pytest.fixture
def fake_onednn(monkeypatch):
    """Install a FakeOneDnn failing for the given pairs; the probe caches start and end empty."""

    def install(*failing):
        fake = FakeOneDnn(failing)
        monkeypatch.setattr(modeling_hf_ast, "_onednn_linear_op", lambda: fake)
        monkeypatch.setattr(modeling_hf_ast, "ONEDNN_LINEAR", True)
        return fake

    caches = (modeling_hf_ast._onednn_runs, modeling_hf_ast._onednn_has_avx512, modeling_hf_ast._onednn_fp32_faster)
    for cache in caches:
        cache.cache_clear()
    yield install
    for cache in caches:
        cache.cache_clear()


def bf16_model():
    model = randomize_(ASTForAudioClassification(ASTConfig(**TINY, num_labels=5)), seed=5)
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        return HfAstForAudioClassification.from_pretrained(directory, dtype=torch.bfloat16).eval()


def test_failing_bf16_gelu_probe_turns_off_that_pair_only(fake_onednn):
    fake = fake_onednn((torch.bfloat16, "gelu"))
    model = bf16_model()
    x = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fused = model(x).logits.float()
        probes = {(dtype, form): modeling_hf_ast._onednn_runs(dtype, form)
                  for dtype in (torch.float32, torch.bfloat16) for form in ("none", "gelu", "add")}
        assert probes == {**{pair: True for pair in probes}, (torch.bfloat16, "gelu"): False}
        # Each pair is probed once; the forward then calls the fake for q, k, v (none) and the attention
        # output and fc2 (add), never for fc1 + GELU, which takes F.linear and GELU.
        assert [call for call in fake.calls if call[0] == torch.bfloat16].count((torch.bfloat16, "gelu")) == 1
        fake.calls.clear()
        model(x)
        layers = TINY["num_hidden_layers"]
        assert sorted(fake.calls, key=str) == sorted(
            [(torch.bfloat16, "none")] * 3 * layers + [(torch.bfloat16, "add")] * 2 * layers, key=str
        )
        modeling_hf_ast.ONEDNN_LINEAR = False  # restored by monkeypatch
        assert (fused - model(x).logits.float()).abs().max() < 0.02 * fused.abs().max()


# -- fp32: oneDNN only where it beats MKL's sgemm ------------------------------------------


@pytest.mark.parametrize(
    ("vendor", "onednn_avx512", "mkl_cap", "setting", "uses_onednn"),
    [
        ("GenuineIntel", True, None, "auto", False),  # MKL runs AVX-512 on Intel: oneDNN 0.93-1.02x
        ("AuthenticAMD", True, None, "auto", True),  # MKL runs AVX2 code on AMD: oneDNN 1.25-1.38x
        ("AuthenticAMD", False, None, "auto", False),  # AVX2-only AMD: both AVX2, 0.97-0.98x
        ("GenuineIntel", True, "AVX2", "auto", True),  # MKL capped below AVX-512 on Intel
        ("GenuineIntel", True, "AVX512", "auto", False),
        ("", True, None, "auto", False),  # vendor unknown: F.linear, never slower than itself
        ("GenuineIntel", False, None, "1", True),  # HF_AST_ONEDNN_LINEAR=1: wherever it runs
        ("AuthenticAMD", True, None, "0", False),  # HF_AST_ONEDNN_LINEAR=0: never
    ],
)
def test_fp32_takes_onednn_only_where_mkl_lacks_avx512(fake_onednn, monkeypatch, vendor, onednn_avx512, mkl_cap,
                                                       setting, uses_onednn):
    fake = fake_onednn()
    monkeypatch.setattr(modeling_hf_ast, "_cpu_vendor", lambda: vendor)
    monkeypatch.setattr(modeling_hf_ast, "_onednn_has_avx512", lambda: onednn_avx512)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    if mkl_cap:
        monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", mkl_cap)
    else:
        monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    enabled, forced = {"auto": (True, False), "1": (True, True), "0": (False, False)}[setting]
    monkeypatch.setattr(modeling_hf_ast, "ONEDNN_LINEAR", enabled)
    monkeypatch.setattr(modeling_hf_ast, "ONEDNN_LINEAR_FORCED", forced)
    model = randomize_(HfAstForAudioClassification(tiny_config()), seed=6)
    x = torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        model(x)  # probes, once
        fake.calls.clear()
        model(x)
    per_layer = [(torch.float32, form) for form in ("none", "none", "none", "add", "gelu", "add")]  # q k v out fc1 fc2
    expected = per_layer * TINY["num_hidden_layers"] if uses_onednn else []
    assert sorted(fake.calls, key=str) == sorted(expected, key=str)


def test_onednn_linear_setting_reads_0_1_and_auto():
    setting = modeling_hf_ast._onednn_linear_setting
    assert setting(None) == setting("") == setting("auto") == setting(" AUTO ") == (True, False)
    assert setting("1") == (True, True)
    assert setting("0") == (False, False)
    assert setting("yes") == (True, False)  # not a setting: auto, with a warning


def test_forced_onednn_fp32_equals_transformers(monkeypatch, tmp_path):
    """HF_AST_ONEDNN_LINEAR=1 on the real op: the fused fp32 path wherever oneDNN runs it, faster here or not."""
    if modeling_hf_ast._onednn_linear_op() is None or not all(
        modeling_hf_ast._onednn_runs(torch.float32, form) for form in ("none", "gelu", "add")
    ):
        pytest.skip("no oneDNN fp32 linear in this torch build")
    monkeypatch.setattr(modeling_hf_ast, "ONEDNN_LINEAR", True)
    monkeypatch.setattr(modeling_hf_ast, "ONEDNN_LINEAR_FORCED", True)
    reference = randomize_(ASTForAudioClassification(ASTConfig(**TINY, num_labels=5)), seed=3)
    reference.save_pretrained(tmp_path)
    model = HfAstForAudioClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert onednn_calls(lambda: model(x)) == 6 * TINY["num_hidden_layers"]  # q, k, v, out, fc1+gelu, fc2+res
        torch.testing.assert_close(model(x).logits, reference(x).logits, atol=1e-5, rtol=0)


class MatmulDtypes(TorchDispatchMode):
    """Records the input dtype of every F.linear and matmul that reaches ATen."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.linear, torch.ops.aten.addmm, torch.ops.aten.mm):
            self.dtypes.append(args[0 if func.overloadpacket is torch.ops.aten.linear else 1].dtype)
        return func(*args, **(kwargs or {}))


def test_without_bf16_matmul_bf16_linear_computes_in_fp32(fake_onednn):
    fake = fake_onednn(*[(torch.bfloat16, form) for form in ("none", "gelu", "add")])
    generator = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(16, 8).to(torch.bfloat16)
    x = torch.randn(3, 16, generator=generator).to(torch.bfloat16)
    residual = torch.randn(3, 8, generator=generator).to(torch.bfloat16)
    weight, bias = layer.weight.detach().float(), layer.bias.detach().float()
    assert not any(modeling_hf_ast._onednn_runs(torch.bfloat16, form) for form in ("none", "gelu", "add"))
    with torch.inference_mode(), MatmulDtypes() as matmuls:
        outputs = [modeling_hf_ast.linear(layer, x), modeling_hf_ast.linear(layer, x, activation="gelu"),
                   modeling_hf_ast.linear(layer, x, residual=residual)]
    # torch's bf16 gemm is the slow path on such CPUs: every matmul ran in fp32, and only the probes met oneDNN.
    assert matmuls.dtypes == [torch.float32] * 3
    assert fake.calls == [(torch.bfloat16, form) for form in ("none", "gelu", "add")]
    plain = x.float() @ weight.T + bias
    expected = [plain, 0.5 * plain * (1 + torch.erf(plain / 2**0.5)), plain + residual.float()]
    for output, value in zip(outputs, expected):
        assert output.dtype == torch.bfloat16
        # Rounded to bf16 once, from fp32: within one bf16 step (2^-8 relative) of the fp32 value.
        torch.testing.assert_close(output.float(), value, rtol=2**-8, atol=1e-6)


if __name__ == "__main__":  # the capped child of the test_avx2_cap_* tests: `file.py DIR` or `file.py - int8`
    if sys.argv[2:] == ["int8"]:
        print(json.dumps(int8_figures()))
    else:
        print(json.dumps(capped_child(sys.argv[1])))
