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


def test_failed_check_leaves_the_previous_file_and_keeps_the_failed_graph_aside(tmp_path, monkeypatch, capsys):
    import hf_ast.export

    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    target = tmp_path / "out.onnx"
    target.write_bytes(b"the previous, checked graph")
    real_check = hf_ast.export.check_onnx

    def failing_check(model, path, **kwargs):
        real_check(model, path, **kwargs)  # the new graph is complete on disk when it is checked
        raise RuntimeError("onnxruntime differs from torch by 1.00e+00 > atol 1e-04; the export is wrong.")

    monkeypatch.setattr(hf_ast.export, "check_onnx", failing_check)
    with pytest.raises(RuntimeError, match=r"out\.onnx is unchanged.*out\.failed-check\.onnx"):
        hf_ast.export.main(["onnx", str(model_dir), str(target)])
    assert target.read_bytes() == b"the previous, checked graph"
    failed = tmp_path / "out.failed-check.onnx"
    onnxruntime.InferenceSession(str(failed), providers=["CPUExecutionProvider"])  # the failed graph, kept to inspect
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "out.failed-check.onnx", "out.onnx"]


def test_cli_names_a_missing_model_folder(tmp_path, monkeypatch):
    from hf_ast.export import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: \./model"):
        main(["onnx", "./model", "out.onnx"])
    assert list(tmp_path.iterdir()) == []
