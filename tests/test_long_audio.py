"""Long audio in sliding windows: `hf_ast.long_audio` and pipeline("audio-classification-long").

Expected values come from running each window by hand through the extractor and the model, with
window bounds written out here, not from the helpers under test.
"""

import json
import re
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from conftest import BLOCK_HF_AST, noise, tiny_config, tiny_model, tone
from transformers import pipeline

from hf_ast import (
    LONG_AUDIO_TASK,
    HfAstFeatureExtractor,
    HfAstModel,
    LongAudioClassificationPipeline,
    classify_long_audio,
    plot_long_audio,
    score_windows,
)

LABELS = {0: "dog", 1: "rain", 2: "siren", 3: "speech", 4: "music"}
RATE = 16000
# 5 s in 1 s windows overlapping by 0.25 s (hop 0.75 s); the last window, 4.5-5.0 s, is shorter.
BOUNDS = [(0, 16000), (12000, 28000), (24000, 40000), (36000, 52000), (48000, 64000), (60000, 76000),
          (72000, 80000)]


def labelled_model(seed: int, problem_type: str):
    model = tiny_model(seed=seed, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                       problem_type=problem_type)
    with torch.no_grad():
        model.classifier.dense.weight.mul_(20)  # spread the scores, so a wrong window or class shows
    return model


@pytest.fixture(scope="module")
def extractor():
    return HfAstFeatureExtractor(max_length=128)  # the tiny models' input: 128 frames, 1.295 s


@pytest.fixture(scope="module")
def single():
    return labelled_model(3, "single_label_classification")


@pytest.fixture(scope="module")
def recording():
    """5 s: a tone, then noise, then a higher tone, so windows differ."""
    return np.concatenate([tone(1.5, 440.0), noise(2.0, seed=1), tone(1.5, 1800.0)]) + noise(5.0, seed=2) * 0.1


@torch.no_grad()
def logits_by_hand(model, extractor, audio, bounds):
    """Each window alone through the extractor (its defaults) and the model: (windows, labels)."""
    rows = []
    for start, end in bounds:
        features = extractor(audio[start:end], sampling_rate=RATE, return_tensors="pt")
        rows.append(model(**features).logits[0])
    return torch.stack(rows)


@pytest.fixture(scope="module")
def expected(single, extractor, recording):
    return logits_by_hand(single, extractor, recording, BOUNDS).softmax(-1)


def by_label(labels):
    return {entry["label"]: entry["score"] for entry in labels}


def test_windows_equal_manual_windowing(single, extractor, recording, expected):
    result = score_windows(single, extractor, recording, RATE, chunk_length_s=1.0, stride_length_s=0.25, batch_size=3)
    assert result.timestamps == [(start / RATE, end / RATE) for start, end in BOUNDS]
    assert result.timestamps[0] == (0.0, 1.0) and result.timestamps[1] == (0.75, 1.75)
    assert result.timestamps[-1] == (4.5, 5.0)
    torch.testing.assert_close(result.scores, expected, atol=1e-5, rtol=0)
    # Windows differ by far more than the tolerance, so a shifted or swapped window would be caught.
    assert (expected[0] - expected[3]).abs().max() > 1e-2

    output = classify_long_audio(single, extractor, recording, RATE, chunk_length_s=1.0, stride_length_s=0.25,
                                 top_k=None, batch_size=8)
    assert [chunk["timestamp"] for chunk in output["chunks"]] == result.timestamps
    for chunk, row in zip(output["chunks"], expected):
        scores = by_label(chunk["labels"])
        assert scores == pytest.approx({LABELS[i]: row[i].item() for i in range(5)}, abs=1e-5)
        assert [entry["score"] for entry in chunk["labels"]] == sorted(scores.values(), reverse=True)


def test_aggregate_max_and_mean(single, extractor, recording, expected):
    options = dict(chunk_length_s=1.0, stride_length_s=0.25, top_k=None)
    largest = by_label(classify_long_audio(single, extractor, recording, RATE, aggregate="max", **options)["labels"])
    average = by_label(classify_long_audio(single, extractor, recording, RATE, aggregate="mean", **options)["labels"])
    for index, label in LABELS.items():
        assert largest[label] == pytest.approx(max(row[index].item() for row in expected), abs=1e-5)
        assert average[label] == pytest.approx(sum(row[index].item() for row in expected) / len(BOUNDS), abs=1e-5)

    top = classify_long_audio(single, extractor, recording, RATE, aggregate="max", **{**options, "top_k": 2})
    assert len(top["labels"]) == 2 and all(len(chunk["labels"]) == 2 for chunk in top["chunks"])
    assert [entry["label"] for entry in top["labels"]] == sorted(largest, key=largest.get, reverse=True)[:2]


def test_tiling_windows_and_default_length(single, extractor):
    # No overlap: the hop is the window; a tail shorter than one 25 ms frame (100 samples) is dropped.
    audio = noise(2.0, seed=5)
    audio = np.concatenate([audio, audio[:100]])
    result = score_windows(single, extractor, audio, RATE, chunk_length_s=1.0)
    assert result.timestamps == [(0.0, 1.0), (1.0, 2.0)]
    # A tail of one frame or more is its own window.
    result = score_windows(single, extractor, noise(2.5, seed=5), RATE, chunk_length_s=1.0)
    assert result.timestamps == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    # Default window: the model's whole input, 400 + 127 * 160 samples for 128 frames (shorter than 10 s).
    result = score_windows(single, extractor, noise(3.0, seed=5), RATE)
    assert result.timestamps == [(0.0, 20720 / RATE), (20720 / RATE, 41440 / RATE), (41440 / RATE, 3.0)]


def test_short_audio_is_one_window_with_the_stock_pipeline_scores(single, extractor):
    clip = noise(0.6, seed=7) + tone(0.6, 700.0)
    output = classify_long_audio(single, extractor, clip, RATE, chunk_length_s=1.0, top_k=None)
    assert [chunk["timestamp"] for chunk in output["chunks"]] == [(0.0, 0.6)]
    stock = pipeline("audio-classification", model=single, feature_extractor=extractor)(clip, top_k=None)
    assert by_label(output["labels"]) == pytest.approx(by_label(stock), abs=1e-5)
    assert by_label(output["chunks"][0]["labels"]) == pytest.approx(by_label(stock), abs=1e-5)
    with pytest.raises(ValueError, match="shorter than one 25 ms analysis frame"):
        classify_long_audio(single, extractor, clip[:300], RATE)


def test_multi_label_sigmoid_and_single_label_softmax(single, extractor, recording):
    multi = labelled_model(4, "multi_label_classification")
    sigmoid = logits_by_hand(multi, extractor, recording, BOUNDS).sigmoid()
    result = score_windows(multi, extractor, recording, RATE, chunk_length_s=1.0, stride_length_s=0.25)
    torch.testing.assert_close(result.scores, sigmoid, atol=1e-5, rtol=0)
    assert (result.scores.sum(-1) - 1).abs().max() > 0.1  # not a distribution
    softmax = score_windows(single, extractor, recording, RATE, chunk_length_s=1.0, stride_length_s=0.25)
    torch.testing.assert_close(softmax.scores.sum(-1), torch.ones(len(BOUNDS)), atol=1e-5, rtol=0)


def test_pipeline_on_files_arrays_and_dicts(single, extractor, recording, tmp_path):
    classifier = pipeline(LONG_AUDIO_TASK, model=single, feature_extractor=extractor, stride_length_s=0.25)
    assert isinstance(classifier, LongAudioClassificationPipeline)
    options = dict(chunk_length_s=1.0, top_k=None, aggregate="mean")
    reference = classify_long_audio(single, extractor, recording, RATE, stride_length_s=0.25, **options)

    def same(output, reference, abs=1e-5):
        assert [chunk["timestamp"] for chunk in output["chunks"]] == [c["timestamp"] for c in reference["chunks"]]
        assert by_label(output["labels"]) == pytest.approx(by_label(reference["labels"]), abs=abs)

    same(classifier(recording, **options), reference)  # the constructor's stride_length_s stays
    same(classifier({"array": recording, "sampling_rate": RATE}, **options), reference)
    same(classifier(torch.from_numpy(recording), batch_size=2, **options), reference)
    soundfile.write(tmp_path / "recording.wav", recording, RATE, subtype="FLOAT")
    same(classifier(str(tmp_path / "recording.wav"), **options), reference)
    # Other rates are resampled first: the same windows in seconds.
    at_8k = recording[::2].copy()
    same(classifier({"raw": at_8k, "sampling_rate": 8000}, **options),
         classify_long_audio(single, extractor, at_8k, 8000, stride_length_s=0.25, **options))

    output = classifier(recording, chunk_length_s=1.0, stride_length_s=0.0, top_k=3)  # call-time options
    assert len(output["chunks"]) == 5 and len(output["labels"]) == 3
    assert len(classifier([recording, recording[:RATE]], chunk_length_s=1.0)) == 2
    with pytest.raises(ValueError, match="unknown arguments"):
        classifier(recording, chunk_length=1.0)


REMOTE_SCRIPT = BLOCK_HF_AST + textwrap.dedent(
    """

    import numpy as np
    from transformers import pipeline

    directory, clip_path = sys.argv[1], sys.argv[2]
    classifier = pipeline("audio-classification-long", model=directory, trust_remote_code=True)
    output = classifier(np.load(clip_path), chunk_length_s=1.0, stride_length_s=0.25, top_k=None, aggregate="mean")
    print(json.dumps({
        "class": type(classifier).__module__ + "." + type(classifier).__name__,
        "output": output,
        "hf_ast_loaded": any(name == "hf_ast" or name.startswith("hf_ast.") for name in sys.modules),
    }))
    """
)


def test_remote_code_pipeline_where_hf_ast_is_not_installed(single, extractor, recording, tmp_path):
    directory = tmp_path / "model"
    single.save_pretrained(directory)
    extractor.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    assert config["custom_pipelines"] == {LONG_AUDIO_TASK: {
        "impl": "long_audio.LongAudioClassificationPipeline", "pt": ["AutoModelForAudioClassification"],
        "type": "audio"}}
    assert (directory / "long_audio.py").exists()

    np.save(tmp_path / "clip.npy", recording)
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home")}
    run = subprocess.run([sys.executable, str(script), str(directory), str(tmp_path / "clip.npy")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["class"].startswith("transformers_modules.") and not result["hf_ast_loaded"]
    assert result["class"].endswith("long_audio.LongAudioClassificationPipeline")
    reference = classify_long_audio(single, extractor, recording, RATE, chunk_length_s=1.0, stride_length_s=0.25,
                                    top_k=None, aggregate="mean")
    chunks = result["output"]["chunks"]
    assert [tuple(chunk["timestamp"]) for chunk in chunks] == [(s / RATE, e / RATE) for s, e in BOUNDS]
    assert by_label(result["output"]["labels"]) == pytest.approx(by_label(reference["labels"]), abs=1e-5)
    for chunk, expected_chunk in zip(chunks, reference["chunks"]):
        assert by_label(chunk["labels"]) == pytest.approx(by_label(expected_chunk["labels"]), abs=1e-5)


def test_encoder_saves_declare_no_pipeline(tmp_path):
    HfAstModel(tiny_config()).save_pretrained(tmp_path)
    assert "custom_pipelines" not in json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(chunk_length_s=0), "chunk_length_s=0: the window length must be a positive number"),
        (dict(chunk_length_s=-1.0), "must be a positive number of seconds"),
        (dict(chunk_length_s=1.0, stride_length_s=1.0), "must be smaller than chunk_length_s=1.0.*overlap"),
        (dict(chunk_length_s=1.0, stride_length_s=1.5), "stride_length_s=0.5 for half-overlapping"),
        (dict(stride_length_s=-0.1), "must be a number of seconds >= 0"),
        (dict(aggregate="median"), "aggregate='median' is not supported; use 'max'.*or 'mean'"),
        (dict(chunk_length_s=5.0), r"longer than the model's input.*max_length=128 frames.*chunk_length_s <= 1.295"),
        (dict(top_k=0), "top_k=0: pass a positive number"),
        (dict(batch_size=0), "batch_size=0: pass a positive number"),
    ],
)
def test_bad_arguments_name_the_problem_and_the_fix(single, extractor, options, message):
    with pytest.raises(ValueError, match=message):
        classify_long_audio(single, extractor, noise(2.0), RATE, **options)


def test_bad_pipeline_arguments_fail_at_call_time(single, extractor):
    classifier = pipeline(LONG_AUDIO_TASK, model=single, feature_extractor=extractor)
    with pytest.raises(ValueError, match="must be smaller than chunk_length_s"):
        classifier(noise(2.0), chunk_length_s=1.0, stride_length_s=1.0)
    with pytest.raises(ValueError, match="aggregate='sum' is not supported"):
        classifier(noise(2.0), aggregate="sum")


def test_plot_writes_a_png(single, extractor, recording, tmp_path):
    result = score_windows(single, extractor, recording, RATE, chunk_length_s=1.0, stride_length_s=0.25)
    path = plot_long_audio(result, recording, RATE, extractor, tmp_path / "long.png", top_k=3)
    data = (tmp_path / "long.png").read_bytes()
    assert path == tmp_path / "long.png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1200, 720) and len(data) > 20_000


def test_non_finite_samples_are_named_by_their_time_in_the_recording(single, extractor, recording):
    broken = recording.copy()
    broken[int(3.2 * RATE)] = np.nan  # in windows 3 and 4: "audio clip 3" (of the first batch) before
    with pytest.raises(ValueError, match=r"NaN or infinite samples, the first at 3\.200 s \(sample 51200\)") as error:
        classify_long_audio(single, extractor, broken, RATE, chunk_length_s=1.0, stride_length_s=0.25)
    assert "clip" not in str(error.value)
    stereo = np.stack([recording, broken])  # (channels, samples): found before the channels are averaged
    stereo[0, 100] = np.inf
    with pytest.raises(ValueError, match=r"the first at 0\.006 s \(sample 100\)"):
        score_windows(single, extractor, stereo, RATE, chunk_length_s=1.0)


def test_a_window_the_extractor_refuses_is_named_by_its_time(single, extractor):
    audio = noise(3.0, seed=3)
    audio[int(2.5 * RATE)] = 1e20  # finite, but far too loud for float32 filterbanks
    with pytest.raises(ValueError, match=r"the window at 2\.00-3\.00 s of the recording: audio has samples as large"
                       ) as error:
        score_windows(single, extractor, audio, RATE, chunk_length_s=1.0, batch_size=8)
    assert "clip 2" not in str(error.value)  # its index inside the batch of windows, which the user never saw


@pytest.mark.parametrize("rate", [0, -16000, 22050.5, "16000", None])
def test_bad_sampling_rate_names_the_fix(single, extractor, rate):
    with pytest.raises(ValueError, match=rf"sampling_rate={re.escape(repr(rate))}: .*positive whole number of Hz"):
        classify_long_audio(single, extractor, noise(2.0), rate, chunk_length_s=1.0)
