"""HfAstFeatureExtractor against transformers' ASTFeatureExtractor and torchaudio's Kaldi fbank."""

import json
import logging
import re
import time

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from conftest import noise, tone
from transformers import ASTFeatureExtractor

from hf_ast import HfAstFeatureExtractor, feature_extraction_hf_ast

MEAN, STD = -4.2677393, 4.5689974


@pytest.fixture(scope="module")
def extractor():
    return HfAstFeatureExtractor()


def kaldi_reference(clip: np.ndarray, frames: int) -> np.ndarray:
    """The reference dataloader's features, written out: torchaudio fbank, zero pad/cut, (x - mean) / (2 std)."""
    fbank = torchaudio.compliance.kaldi.fbank(
        torch.from_numpy(clip)[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, max(0, frames - fbank.shape[0])))[:frames]
    return ((fbank - MEAN) / (2 * STD)).numpy()


@pytest.mark.parametrize("batch", [1, 8])
def test_matches_transformers_on_noise_shorter_and_longer_than_max_length(extractor, batch):
    seconds = [1.0, 12.5, 3.3, 10.24, 0.5, 15.0, 7.0, 10.0][:batch]
    clips = [noise(s, seed=i) for i, s in enumerate(seconds)]
    expected = ASTFeatureExtractor()(clips, sampling_rate=16000, return_tensors="np")["input_values"]
    got = extractor(clips, sampling_rate=16000, return_tensors="np")["input_values"]
    assert got.shape == expected.shape == (batch, 1024, 128)
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


def test_matches_transformers_and_torchaudio_on_real_speech(extractor, speech_wav):
    speech, rate = soundfile.read(speech_wav, dtype="float32")
    assert rate == 16000 and speech.ndim == 1 and len(speech) > 8000
    clips = [speech, speech[: len(speech) // 2], tone(2.0)]
    expected = ASTFeatureExtractor()(clips, sampling_rate=16000, return_tensors="np")["input_values"]
    got = extractor(clips, sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
    np.testing.assert_allclose(got[0], kaldi_reference(speech, 1024), atol=1e-3, rtol=0)


def test_padded_frames_are_normalised_zeros(extractor):
    out = extractor(noise(1.0), sampling_rate=16000, return_tensors="pt")["input_values"]
    frames = 1 + (16000 - 400) // 160  # Kaldi snip_edges framing: 98
    # Zero log-mel padding, then (0 - mean) / (2 std) ~ +0.467, as the reference does.
    torch.testing.assert_close(out[0, frames:], torch.full((1024 - frames, 128), -MEAN / (2 * STD)))
    assert not torch.allclose(out[0, frames - 1], out[0, frames])


def test_longest_padding_and_frame_mask(extractor):
    clips = [noise(0.5, 1), noise(2.0, 2), noise(0.05, 3)]  # 48, 198 and 3 frames (1 + (n - 400) // 160)
    out = extractor(clips, sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="pt")
    assert out["input_values"].shape == (3, 198, 128)
    assert out["attention_mask"].sum(-1).tolist() == [48, 198, 3]
    np.testing.assert_allclose(out["input_values"][0, :48].numpy(), kaldi_reference(clips[0], 48), atol=1e-3)
    # A lone clip shorter than one patch is padded to one patch (16 frames).
    alone = extractor(clips[2], sampling_rate=16000, padding="longest", return_tensors="pt")["input_values"]
    assert alone.shape == (1, 16, 128)


def test_call_time_max_length_and_truncation(extractor):
    clip = noise(12.0)  # 1198 frames
    out = extractor(clip, sampling_rate=16000, max_length=512, return_tensors="np")["input_values"]
    np.testing.assert_allclose(out[0], kaldi_reference(clip, 512), atol=1e-3)
    whole = extractor(clip, sampling_rate=16000, padding="longest", truncation=False, return_tensors="np")
    assert whole["input_values"].shape == (1, 1198, 128)
    capped = extractor(clip, sampling_rate=16000, padding="longest", return_tensors="np")
    assert capped["input_values"].shape == (1, 1024, 128)


def test_batched_inputs_of_every_accepted_kind(extractor):
    a, b = noise(1.0, 1), noise(1.0, 2)
    expected = extractor([a, b], sampling_rate=16000, return_tensors="np")["input_values"]
    for batch in (np.stack([a, b]), torch.from_numpy(np.stack([a, b])), [torch.from_numpy(a), b], (a.tolist(), b)):
        got = extractor(batch, sampling_rate=16000, return_tensors="np")["input_values"]
        np.testing.assert_allclose(got, expected, atol=1e-6)
    single = extractor(a.tolist(), sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(single[0], expected[0], atol=1e-6)


def test_pcm_float64_and_multichannel(extractor):
    clip = noise(1.0)
    expected = extractor(clip, sampling_rate=16000, return_tensors="np")["input_values"]
    pcm = np.round(clip * 32768).astype(np.int16)
    np.testing.assert_allclose(
        extractor(pcm, sampling_rate=16000, return_tensors="np")["input_values"], expected, atol=2e-2
    )
    np.testing.assert_allclose(
        extractor(clip.astype(np.float64), sampling_rate=16000, return_tensors="np")["input_values"], expected,
        atol=1e-6,
    )
    other = noise(1.0, seed=5)
    stereo = np.stack([clip, other])  # (channels, samples) -> averaged
    mono = extractor((clip + other) / 2, sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(
        extractor([stereo], sampling_rate=16000, return_tensors="np")["input_values"], mono, atol=1e-5
    )


def test_resampler_torchaudio_is_torchaudios_sinc_resampler():
    extractor = HfAstFeatureExtractor(resampler="torchaudio")
    clip = noise(1.0, sampling_rate=44100)
    resampled = torchaudio.functional.resample(torch.from_numpy(clip), 44100, 16000).numpy()
    expected = extractor(resampled, sampling_rate=16000, return_tensors="np")["input_values"]
    got = extractor(clip, sampling_rate=44100, return_tensors="np")["input_values"]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="resampler='sox'"):
        HfAstFeatureExtractor(resampler="sox")


def test_a_recording_at_8_khz_gives_the_same_features_on_every_path(tmp_path, extractor):
    """Training (datasets/torchcodec), pipeline() with a path (the ffmpeg binary) and an array at its own rate.

    Real speech recorded at 8 kHz (espeak-ng, resampled by sox): its band above 4 kHz is empty once
    upsampled, and there the resamplers' residues differed by up to 1.5 in normalised features
    (torchaudio for arrays against FFmpeg for files) before the extractor used FFmpeg's too.
    """
    import soundfile
    from torchcodec.decoders import AudioDecoder
    from transformers.pipelines.audio_utils import ffmpeg_read

    from hf_ast.training.synthetic import speak

    recording = tmp_path / "eight.wav"
    soundfile.write(recording, speak("eight", "en-us+m3", 8000), 8000, subtype="PCM_16")
    array, rate = soundfile.read(recording, dtype="float32")
    assert rate == 8000
    paths = {
        "array at 8 kHz": (array, 8000),
        "torchcodec (datasets, training)": (AudioDecoder(str(recording), sample_rate=16000).get_all_samples().data[0]
                                            .numpy(), 16000),
        "ffmpeg binary (pipeline path)": (ffmpeg_read(recording.read_bytes(), 16000), 16000),
    }
    features = {name: extractor(audio, sampling_rate=rate, return_tensors="np")["input_values"]
                for name, (audio, rate) in paths.items()}
    reference = features.pop("array at 8 kHz")
    for name, got in features.items():
        np.testing.assert_allclose(got, reference, atol=1e-3, err_msg=name)
    # The band above 4 kHz is where they differed: torchaudio's residue is not FFmpeg's.
    torchaudio_path = HfAstFeatureExtractor(resampler="torchaudio")(array, sampling_rate=8000, return_tensors="np")
    assert np.abs(torchaudio_path["input_values"] - reference).max() > 0.1


def test_missing_sampling_rate_warns(extractor, caplog):
    with caplog.at_level(logging.WARNING):
        extractor(noise(1.0), return_tensors="np")
    assert "sampling_rate" in caplog.text


def test_runs_on_a_requested_device(extractor):
    out = extractor([noise(1.0)], sampling_rate=16000, return_tensors="pt", device="cpu")
    assert out["input_values"].device.type == "cpu"
    if torch.cuda.is_available():  # exercised on GPU machines
        gpu = extractor([noise(1.0)], sampling_rate=16000, return_tensors="pt", device="cuda")
        torch.testing.assert_close(gpu["input_values"].cpu(), out["input_values"], atol=1e-3, rtol=0)


def test_return_types(extractor):
    out = extractor([noise(0.5), noise(1.0)], sampling_rate=16000, padding="do_not_pad")
    assert [x.shape for x in out["input_values"]] == [(48, 128), (98, 128)]
    with pytest.raises(ValueError, match="longest"):
        extractor([noise(0.5), noise(1.0)], sampling_rate=16000, padding="do_not_pad", return_tensors="pt")


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros(300, dtype=np.float32), "shorter than one 25 ms frame"),
        (np.array([0.1, np.nan] * 400, dtype=np.float32), "NaN"),
        (np.array([0.1, np.inf] * 400, dtype=np.float32), "NaN or infinite"),
        ([np.zeros((2, 2, 16000), dtype=np.float32)], r"audio clip 0 has shape \(2, 2, 16000\)"),
        (np.array(["a"] * 800), "not numeric"),
        ([np.zeros((16000, 2), dtype=np.float32)], r"array\.T"),
        ([], "empty list"),
        (np.zeros((2, 2, 2), dtype=np.float32), "mono"),
        ("speech.wav", "not supported"),
    ],
)
def test_bad_input_names_the_problem_and_the_fix(extractor, audio, message):
    with pytest.raises(ValueError, match=message):
        extractor(audio, sampling_rate=16000)


def test_save_and_load_keeps_statistics(tmp_path):
    custom = HfAstFeatureExtractor(mean=-6.6268077, std=5.358466, max_length=512)  # ESC-50 statistics
    custom.save_pretrained(tmp_path)
    loaded = HfAstFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.mean, loaded.std, loaded.max_length) == (-6.6268077, 5.358466, 512)
    clip = noise(2.0)
    np.testing.assert_allclose(
        loaded(clip, sampling_rate=16000, return_tensors="np")["input_values"],
        custom(clip, sampling_rate=16000, return_tensors="np")["input_values"],
    )


def test_call_time_do_normalize_gives_raw_log_mel(extractor):
    clip = noise(1.0)
    raw = extractor(clip, sampling_rate=16000, do_normalize=False, return_tensors="np")["input_values"]
    fbank = torchaudio.compliance.kaldi.fbank(torch.from_numpy(clip)[None], window_type="hanning", num_mel_bins=128)
    np.testing.assert_allclose(raw[0, :98], fbank.numpy(), atol=1e-3)
    normalized = extractor(clip, sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(extractor.normalize(raw), normalized, atol=1e-6)


def test_dc_offsets_and_edge_lengths_match_transformers(extractor):
    """Kaldi removes each frame's DC; the batched path folds that into the spectrum, so offsets must not leak."""
    rng = np.random.default_rng(11)
    clips = [(rng.standard_normal(n) * 0.05 + offset).astype(np.float32)
             for n, offset in ((400, 0.9), (559, -0.5), (560, 0.2), (48000, 0.95), (170000, -0.3))]
    expected = ASTFeatureExtractor()(clips, sampling_rate=16000, return_tensors="np")["input_values"]
    got = extractor(clips, sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


# -- faults end in errors that name the problem and the fix ---------------------------------


@pytest.mark.parametrize("rate", [16000, 44100])
def test_samples_by_channels_stereo_fails_fast_and_names_the_transposition(extractor, rate):
    stereo = np.stack([noise(0.1, 1, rate), noise(0.1, 2, rate)], axis=1)  # (samples, 2): 0.1 s of audio
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"shape \({stereo.shape[0]}, 2\).*array\.T"):
        extractor(stereo, sampling_rate=rate)
    # Before the fix, each 2-sample row was resampled first: 85 s at 44.1 kHz.
    assert time.perf_counter() - start < 2.0
    # The transposed array is one stereo clip, averaged to mono.
    got = extractor([stereo.T], sampling_rate=rate, return_tensors="np")["input_values"]
    np.testing.assert_allclose(got, extractor(stereo.mean(axis=1), sampling_rate=rate, return_tensors="np")[
        "input_values"], atol=1e-5)


def test_short_clips_are_refused_before_resampling(extractor, monkeypatch):
    # ceil(400 * 44100 / 16000) = 1103 samples at 44.1 kHz surely give one 25 ms frame at 16 kHz
    # (FFmpeg gives 400, torchaudio ceil(n * 16000 / 44100) = 401); fewer are refused, named at the input's rate.
    assert extractor(noise(0.1, sampling_rate=44100)[:1103], sampling_rate=44100, return_tensors="np")[
        "input_values"].shape == (1, 1024, 128)
    calls = []
    monkeypatch.setattr(feature_extraction_hf_ast, "resample", lambda *args: calls.append(args))
    with pytest.raises(ValueError, match=r"clip 1 has 1102 samples at 44100 Hz.*at least 1103 samples at 44100 Hz"):
        extractor([noise(1.0, sampling_rate=44100), np.zeros(1102, np.float32)], sampling_rate=44100)
    assert not calls  # nothing was resampled


def test_python_int_lists_are_float_samples_only_within_unit_range(extractor):
    # Integers beyond +-1 would be read as floats of huge amplitude: PCM of an unknown width.
    pcm = np.round(noise(1.0) * 32768).astype(np.int16)
    with pytest.raises(ValueError, match=r"integers as large as \d+.*dtype=np\.int16"):
        extractor(pcm.tolist(), sampling_rate=16000)
    with pytest.raises(ValueError, match="audio clip 1 is a list of integers"):
        extractor([noise(1.0), pcm.tolist()], sampling_rate=16000)
    # Within [-1, 1] they are float samples (e.g. a list built as [0] * n); numpy int16 is PCM as before.
    ternary = np.sign(noise(1.0)).astype(np.int64)
    expected = extractor(ternary.astype(np.float32), sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(extractor(ternary.tolist(), sampling_rate=16000, return_tensors="np")[
        "input_values"], expected, atol=1e-6)
    np.testing.assert_allclose(extractor(pcm, sampling_rate=16000, return_tensors="np")["input_values"],
                               extractor(pcm / 32768, sampling_rate=16000, return_tensors="np")["input_values"],
                               atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(sampling_rate=0), r"sampling_rate=0: .*positive whole number of Hz"),
        (dict(sampling_rate=-16000), r"sampling_rate=-16000: "),
        (dict(sampling_rate=44100.5), r"sampling_rate=44100\.5: "),
        (dict(sampling_rate="16000"), r"sampling_rate='16000': "),
        (dict(sampling_rate=True), r"sampling_rate=True: "),
        (dict(sampling_rate=16000, max_length=0), r"max_length=0: .*positive whole number of frames"),
        (dict(sampling_rate=16000, max_length=-5), r"max_length=-5: "),
        (dict(sampling_rate=16000, max_length=10.5), r"max_length=10\.5: "),
    ],
)
def test_bad_rate_and_length_arguments_name_the_fix(extractor, options, message):
    with pytest.raises(ValueError, match=message):
        extractor(noise(1.0), **options)


def test_whole_number_float_rates_are_rates(extractor):
    expected = extractor(noise(1.0), sampling_rate=16000, return_tensors="np")["input_values"]
    for rate in (16000.0, np.int64(16000), np.float32(16000)):
        np.testing.assert_array_equal(extractor(noise(1.0), sampling_rate=rate, return_tensors="np")[
            "input_values"], expected)


@pytest.mark.parametrize(
    "audio", [np.zeros((0, 16000), np.float32), torch.zeros(0, 16000), np.zeros((0, 0), np.float32)]
)
def test_empty_batch_is_refused(extractor, audio):
    with pytest.raises(ValueError, match="no clips|empty"):
        extractor(audio, sampling_rate=16000)


def test_audio_that_requires_grad_is_refused_with_the_fix(extractor):
    audio = torch.from_numpy(noise(1.0)).requires_grad_()
    with pytest.raises(ValueError, match=r"requires grad.*not differentiable.*\.detach\(\)"):
        extractor(audio, sampling_rate=16000, return_tensors="pt")
    with pytest.raises(ValueError, match="audio clip 1 requires grad"):
        extractor([noise(1.0), audio], sampling_rate=16000, return_tensors="pt")
    expected = extractor(noise(1.0), sampling_rate=16000, return_tensors="pt")["input_values"]
    torch.testing.assert_close(extractor(audio.detach(), sampling_rate=16000, return_tensors="pt")[
        "input_values"], expected)
    with torch.no_grad():  # no graph is recorded: nothing to refuse
        torch.testing.assert_close(extractor(audio, sampling_rate=16000, return_tensors="pt")["input_values"],
                                   expected)


@pytest.mark.parametrize("field, value", [("std", 0.0), ("std", -4.5), ("std", float("nan")),
                                          ("mean", float("inf")), ("max_length", 0), ("sampling_rate", 0)])
def test_saved_extractor_with_broken_fields_fails_at_load(tmp_path, field, value):
    HfAstFeatureExtractor().save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    saved[field] = value
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=rf"{field}=.*preprocessor_config\.json"):
        HfAstFeatureExtractor.from_pretrained(tmp_path)


def test_zero_std_set_after_loading_fails_at_call_time(tmp_path):
    extractor = HfAstFeatureExtractor()
    extractor.std = 0.0
    with pytest.raises(ValueError, match="std=0.0"):
        extractor(noise(1.0), sampling_rate=16000)
    with pytest.raises(ValueError, match="std=0.0"):
        extractor.normalize(np.zeros((1, 16, 128), np.float32))
    # Raw log-mel needs no statistics.
    raw = extractor(noise(1.0), sampling_rate=16000, do_normalize=False, return_tensors="np")["input_values"]
    assert np.isfinite(raw).all()


@pytest.mark.parametrize("peaks", [[3e38], [3e38, 3e38], [1e20]])
def test_huge_finite_samples_are_named_as_too_loud_not_as_nan(extractor, peaks):
    clip = noise(1.0)
    clip[5 : 5 + len(peaks)] = peaks  # finite float32 values; two 3e38 overflowed the old sum check
    peak = re.escape(f"{peaks[0]:.3g}")
    with pytest.raises(ValueError, match=rf"audio has samples as large as {peak}.*\[-1, 1\]") as error:
        extractor(clip, sampling_rate=16000)
    assert "NaN" not in str(error.value)
    # Loud but representable audio (unscaled 16-bit PCM stored as floats) still gives finite features.
    loud = extractor(noise(1.0) * 32768, sampling_rate=16000, return_tensors="np")["input_values"]
    assert np.isfinite(loud).all()
