"""pipeline("audio-classification") and trust_remote_code loading without hf_ast installed."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from conftest import BLOCK_HF_AST, noise, tiny_model, tone
from transformers import AutoFeatureExtractor, pipeline

from hf_ast import HfAstFeatureExtractor

LABELS = {0: "dog", 1: "rain", 2: "siren", 3: "speech", 4: "music"}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny single-label hf-ast model (128-frame geometry) with its feature extractor."""
    directory = tmp_path_factory.mktemp("tiny_ast")
    model = tiny_model(seed=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                       problem_type="single_label_classification")
    model.save_pretrained(directory)
    HfAstFeatureExtractor(max_length=128).save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("audio")
    clip = tone(1.5, 523.0) + noise(1.5, seed=4)
    soundfile.write(directory / "clip.wav", clip, 16000)
    soundfile.write(directory / "clip.flac", clip, 16000)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(directory / "clip.wav"), str(directory / "clip.mp3")],
        check=True,
    )
    return directory, clip


def expected_scores(model, clip):
    features = HfAstFeatureExtractor(max_length=128)(clip, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        return model(**features).logits[0].softmax(-1)


def as_dict(results):
    return {r["label"]: r["score"] for r in results}


def test_pipeline_on_arrays_dicts_and_files(saved_model, audio_files):
    directory, model = saved_model
    files, clip = audio_files
    classifier = pipeline("audio-classification", model=str(directory))
    assert isinstance(classifier.feature_extractor, HfAstFeatureExtractor)
    expected = expected_scores(model, clip)

    results = classifier(clip)
    assert len(results) == 5 and results[0]["label"] in LABELS.values()
    for label, score in as_dict(results).items():
        assert score == pytest.approx(expected[model.config.label2id[label]].item(), abs=1e-5)
    assert as_dict(classifier({"array": clip, "sampling_rate": 16000})) == pytest.approx(as_dict(results), abs=1e-6)
    # 44.1 kHz dict input is resampled.
    assert len(classifier({"array": noise(1.0, sampling_rate=44100), "sampling_rate": 44100})) == 5
    assert as_dict(classifier(str(files / "clip.wav"))) == pytest.approx(as_dict(results), abs=1e-3)
    assert as_dict(classifier(str(files / "clip.flac"))) == pytest.approx(as_dict(results), abs=1e-3)
    # mp3 is lossy: the same ranking, close scores.
    mp3 = classifier(str(files / "clip.mp3"))
    assert mp3[0]["label"] == results[0]["label"]


def test_pipeline_top_k_and_batch_size(saved_model):
    directory, _ = saved_model
    # transformers 5.23's pipeline lets every call reset top_k, so it is given at call time.
    classifier = pipeline("audio-classification", model=str(directory))
    clips = [noise(s, seed=i) for i, s in enumerate((0.5, 1.0, 1.3, 0.7, 1.1))]
    assert len(classifier(clips[0], top_k=2)) == 2
    assert [r["label"] for r in classifier(clips[0], top_k=4)] == [r["label"] for r in classifier(clips[0])][:4]
    one = classifier(clips, batch_size=1, top_k=None)
    four = classifier(clips, batch_size=4, top_k=None)
    for a, b in zip(one, four):
        assert as_dict(a) == pytest.approx(as_dict(b), abs=1e-5)


def test_multi_label_models_return_sigmoid_scores(tmp_path):
    model = tiny_model(seed=5, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                       problem_type="multi_label_classification")
    model.save_pretrained(tmp_path)
    HfAstFeatureExtractor(max_length=128).save_pretrained(tmp_path)
    clip = noise(1.0)
    results = pipeline("audio-classification", model=str(tmp_path), top_k=None)(clip)
    features = HfAstFeatureExtractor(max_length=128)(clip, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        sigmoid = model(**features).logits[0].sigmoid()
    for label, score in as_dict(results).items():
        assert score == pytest.approx(sigmoid[model.config.label2id[label]].item(), abs=1e-5)
    assert sum(as_dict(results).values()) != pytest.approx(1.0, abs=1e-3)


def test_auto_feature_extractor(saved_model):
    directory, _ = saved_model
    extractor = AutoFeatureExtractor.from_pretrained(directory)
    assert isinstance(extractor, HfAstFeatureExtractor) and extractor.max_length == 128
    preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"]["AutoFeatureExtractor"] == "feature_extraction_hf_ast.HfAstFeatureExtractor"
    assert (directory / "feature_extraction_hf_ast.py").exists()


REMOTE_SCRIPT = BLOCK_HF_AST + textwrap.dedent(
    """

    import numpy as np
    import torch
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification, pipeline

    directory, clip_path = sys.argv[1], sys.argv[2]
    clip = np.load(clip_path)
    model = AutoModelForAudioClassification.from_pretrained(directory, trust_remote_code=True).eval()
    encoder = AutoModel.from_pretrained(directory, trust_remote_code=True)
    extractor = AutoFeatureExtractor.from_pretrained(directory, trust_remote_code=True)
    features = extractor(clip, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = model(**features).logits[0]
    classifier = pipeline("audio-classification", model=directory, trust_remote_code=True, top_k=None)
    print(json.dumps({
        "model": type(model).__name__, "module": type(model).__module__, "encoder": type(encoder).__name__,
        "extractor": type(extractor).__name__, "logits": logits.tolist(),
        "pipeline": {r["label"]: r["score"] for r in classifier(clip)},
        "hf_ast_loaded": any(name == "hf_ast" or name.startswith("hf_ast.") for name in sys.modules),
    }))
    """
)


def test_remote_code_loads_where_hf_ast_is_not_installed(saved_model, tmp_path):
    directory, model = saved_model
    clip = noise(1.2, seed=9)
    np.save(tmp_path / "clip.npy", clip)
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home")}
    run = subprocess.run(
        [sys.executable, str(script), str(directory), str(tmp_path / "clip.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["model"] == "HfAstForAudioClassification" and result["encoder"] == "HfAstModel"
    assert result["extractor"] == "HfAstFeatureExtractor"
    assert result["module"].startswith("transformers_modules.") and not result["hf_ast_loaded"]
    features = HfAstFeatureExtractor(max_length=128)(clip, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        expected = model(**features).logits[0]
    np.testing.assert_allclose(result["logits"], expected.numpy(), atol=1e-5)
    probabilities = expected.softmax(-1)
    for label, score in result["pipeline"].items():
        assert score == pytest.approx(probabilities[model.config.label2id[label]].item(), abs=1e-5)
