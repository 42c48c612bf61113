"""Every python snippet in README.md runs, against local stand-ins for the Hub checkpoints it names."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import randomize_, tiny_model, tone
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
)

from hf_ast import HfAstFeatureExtractor

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


@pytest.fixture
def hub_stand_ins(tmp_path, monkeypatch):
    """Small local models under the Hub ids and names the README uses."""
    monkeypatch.chdir(tmp_path)
    audioset = tmp_path / "mit-ast"
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       num_labels=7, problem_type="multi_label_classification")
    randomize_(ASTForAudioClassification(config), std=0.05).save_pretrained(audioset)
    ASTFeatureExtractor().save_pretrained(audioset)

    deit = tmp_path / "deit-384"
    deit_config = DeiTConfig(image_size=384, patch_size=16, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64)
    randomize_(DeiTForImageClassificationWithTeacher(deit_config), std=0.05).save_pretrained(deit)

    mine = tmp_path / "my-ast"
    tiny_model(max_length=1024, num_labels=7).save_pretrained(mine)
    HfAstFeatureExtractor().save_pretrained(mine)

    soundfile.write(tmp_path / "dog_bark.wav", tone(2.0, 300.0), 16000)
    return {
        "MIT/ast-finetuned-audioset-10-10-0.4593": str(audioset),
        "facebook/deit-base-distilled-patch16-384": str(deit),
        '"my-ast"': f'"{mine}"',
    }


def test_readme_has_the_snippets_it_documents():
    assert len(SNIPPETS) >= 5
    assert "bash scripts/demo.sh" in README and "bash scripts/test.sh" in README


def test_readme_python_snippets_run(hub_stand_ins, capsys):
    namespace = {}
    for snippet in SNIPPETS:
        code = snippet
        for name, local in hub_stand_ins.items():
            code = code.replace(name, local)
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    printed = capsys.readouterr().out
    assert "'label'" in printed  # the quick start printed pipeline results
    assert namespace["logits"].shape == (2, 7)
    assert namespace["model"].config.max_length == 512 and namespace["model"].config.num_labels == 50
    assert isinstance(namespace["classifier"]("dog_bark.wav"), list)
    assert np.isfinite(namespace["batch"]["input_values"].numpy()).all()
    assert torch.is_tensor(namespace["logits"])


def test_demo_runs_offline(tmp_path):
    run = subprocess.run(
        # The README's main job, scaled down (the full one trains for minutes; its figures are in the notes).
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--output_dir", str(tmp_path / "demo"),
         "--num_train", "48", "--num_test", "24", "--duration", "1.0", "--epochs", "1", "--batch_size", "16",
         "--hidden_size", "64", "--layers", "2"],
        capture_output=True, text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[4/4]" in run.stdout and "held-out mAP" in run.stdout
    model_dir = tmp_path / "demo" / "ast-sound-events"
    assert (model_dir / "modeling_hf_ast.py").exists() and (model_dir / "training_curves.png").exists()
    assert 0 <= json.loads((model_dir / "all_results.json").read_text())["final"]["mAP"] <= 1
