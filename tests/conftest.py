"""Shared builders for the tests: tiny configs, randomised weights, audio made here."""

import importlib.util
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hf_ast  # noqa: E402  (registers the Auto classes)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_length=128,
    num_mel_bins=128,
)


def tiny_config(**overrides) -> hf_ast.HfAstConfig:
    return hf_ast.HfAstConfig(**{**TINY, "num_labels": 5, **overrides})


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every tensor random values, including those initialised to zeros or ones, so parity tests can fail."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def tiny_model(seed: int = 0, **overrides) -> hf_ast.HfAstForAudioClassification:
    return randomize_(hf_ast.HfAstForAudioClassification(tiny_config(**overrides)), seed=seed)


def noise(seconds: float, seed: int = 0, sampling_rate: int = 16000) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * sampling_rate)) * 0.1).astype(np.float32)


def tone(seconds: float, freq: float = 440.0, sampling_rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> str:
    """Real synthetic speech from espeak-ng (installed by scripts/setup.sh), 16 kHz mono wav."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run scripts/setup.sh (it installs espeak-ng, sox and ffmpeg)")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(path), "The audio spectrogram transformer classifies sounds from patches."],
        check=True,
    )
    resampled = path.with_name("speech16k.wav")
    subprocess.run(["sox", str(path), "-r", "16000", "-c", "1", str(resampled)], check=True)
    return str(resampled)


# Prelude of the subprocess scripts that prove remote code works where hf_ast is not installed.
BLOCK_HF_AST = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockHfAst(importlib.abc.MetaPathFinder):
        # Make hf_ast unimportable, as on a machine where it is not installed.
        def find_spec(self, name, path=None, target=None):
            if name == "hf_ast" or name.startswith("hf_ast."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockHfAst())
    try:
        import hf_ast
        raise SystemExit("hf_ast is importable; the test would prove nothing")
    except ModuleNotFoundError:
        pass
    """
)


ROOT = Path(__file__).resolve().parents[1]


def load_module(path, name: str):
    """A script (examples/*.py) imported by path, as a fresh module: scripts are not a package."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_script():
    """examples/run_audioset.py as a module, so tests call its parse_args() and main() in process."""
    return load_module(ROOT / "examples" / "run_audioset.py", "run_audioset")


def save_tiny_deit(directory) -> str:
    """A distilled DeiT at 384 px / 16 px patches (24x24 grid), width 64, 2 layers, random weights."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(image_size=384, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128)
    torch.manual_seed(0)
    DeiTForImageClassificationWithTeacher(config).save_pretrained(directory)
    return directory
