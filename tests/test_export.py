"""ONNX export: the graph onnxruntime runs gives torch's logits (dynamic batch, optionally dynamic frames)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_model

pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

from hf_ast.export import check_onnx, export_onnx  # noqa: E402


@pytest.mark.parametrize("dynamic_time", [False, True])
def test_onnxruntime_matches_torch(tmp_path, dynamic_time):
    model = tiny_model()
    path = export_onnx(model, tmp_path / "model.onnx", dynamic_time=dynamic_time)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_values"]
    lengths = [128, 57, 16] if dynamic_time else [128]
    for batch_size in (1, 5):  # neither is the traced batch size (2)
        for frames in lengths:
            x = torch.randn(batch_size, frames, 128, generator=torch.Generator().manual_seed(frames)) * 0.5
            with torch.no_grad():
                expected = model(x).logits.numpy()
            got = session.run(["logits"], {"input_values": x.numpy()})[0]
            assert got.shape == (batch_size, 5)
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert check_onnx(model, path, dynamic_time=dynamic_time) <= 1e-4


def test_cli_writes_and_checks(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    run = subprocess.run(
        [sys.executable, "-m", "hf_ast.export", "onnx", str(model_dir), str(tmp_path / "out.onnx"), "--dynamic-time"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "onnxruntime matches torch" in run.stdout and (tmp_path / "out.onnx").exists()


def test_fixed_length_graph_rejects_other_lengths(tmp_path):
    model = tiny_model()
    path = export_onnx(model, tmp_path / "model.onnx", dynamic_time=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="dimension|Dimension|shape"):
        session.run(["logits"], {"input_values": np.zeros((1, 64, 128), dtype=np.float32)})
