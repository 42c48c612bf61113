"""A synthetic multi-label sound-event dataset that an AST can learn offline in minutes.

Every clip mixes one to three sources of distinct classes at random onsets, durations and
gains over low white background noise, at 16 kHz (default 2.0 s, i.e. 198 Kaldi frames). The
eight classes are built to be told apart on a 128-bin log-mel spectrogram:

=============  ==========================================================  ====================
class          what it is                                                  held-out parameter
=============  ==========================================================  ====================
tone           one steady sinusoid: a horizontal line                      frequency_hz
chord          a struck chord: three sinusoids of a close-position triad   root_hz
               (major 4:5:6, minor 10:12:15 or sus4 6:8:9) that start
               together and die away (time constant 0.3-0.8 s): three
               parallel fading lines within 0.6 octave
chirp_up       exponential sweep upwards: a rising line                    octaves_per_s
chirp_down     exponential sweep downwards: a falling line                 octaves_per_s
siren          a warbling siren: the frequency swings sinusoidally by      center_hz,
               +-0.25 to 0.6 octave around its centre: a wavy line         cycles_per_s
noise_burst    one to three 60-250 ms bursts of white noise band-passed    center_hz
               to 0.4-1.2 octaves: blobs limited in frequency
clicks         a periodic train of 3 ms decaying noise clicks: evenly      clicks_per_s
               spaced vertical lines across all frequencies
buzz           a harmonic stack (all harmonics to 6 kHz, amplitudes        f0_hz
               falling as k^-1 to k^-1.5): many equally spaced lines
=============  ==========================================================  ====================

Held-out split. Each class's held-out parameter is drawn log-uniformly from an
`InterleavedRange`: the range `[low, high]` is cut into an odd number of bands of equal width
on a log scale; the `train` split draws from the even bands (0, 2, ..., both ends included)
and `test` from the odd ones, so no held-out pitch, sweep rate, warble rate, noise band or
click rate was used in training, and each lies between training values. Pitch bands are
about a quarter octave wide, 2-8 mel bins, less than a 16-bin patch: the test asks a model
trained from scratch, whose learned position embeddings know only the pitches it has seen, to
interpolate between them (with half-octave bands a small AST stays near 0.5-0.6 AP on
held-out tones). The ranges (`HELD_OUT_RANGES`):

    tone.frequency_hz        150 - 4800 Hz   21 bands (0.24 octave each)
    chord.root_hz            400 - 1600 Hz    9 bands (0.22 octave)
    chirp_*.octaves_per_s    1.5 - 8 oct/s    7 bands (0.35 octave of rate)
    siren.center_hz          400 - 2400 Hz   11 bands (0.24 octave)
    siren.cycles_per_s       2 - 8 per s      5 bands (0.40 octave of rate)
    noise_burst.center_hz    300 - 4800 Hz   17 bands (0.24 octave)
    clicks.clicks_per_s      3 - 24 per s     7 bands (0.43 octave of rate)
    buzz.f0_hz               70 - 320 Hz      7 bands (0.31 octave)

Everything else (chord shape and decay, siren depth, noise bandwidth and burst count, buzz slope, chirp
start, onsets, durations, gains, phases, background level) comes from the same distribution in
both splits. A source lasts 0.5 s to the whole clip (a sweep is cut to at most 4.5 octaves),
gains are -15 to -3 dB, background noise -60 to -45 dB, and a mix whose peak exceeds 0.95 is
scaled down to it.

Deterministic: `make_sound_events` and `write_sound_events_audiofolder` give each split its own
stream `np.random.default_rng([seed, split_index])`, so a split does not depend on the size of
the other and a smaller split is a prefix of a larger one.

    python -m hf_ast.training.synthetic data/sound_events --num-train 3000 --num-test 500 --seed 0
"""

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..feature_extraction_hf_ast import frame_geometry, num_frames

SOUND_EVENT_CLASSES: tuple[str, ...] = (
    "tone",
    "chord",
    "chirp_up",
    "chirp_down",
    "siren",
    "noise_burst",
    "clicks",
    "buzz",
)
SPLITS: tuple[str, ...] = ("train", "test")
SAMPLING_RATE = 16000
# Sinusoids stay at or below this, so any rate >= 2 * MAX_FREQUENCY_HZ renders them without aliasing
# (noise is band-passed in the FFT domain and cannot alias).
MAX_FREQUENCY_HZ = 6000.0
MIN_SWEEP_HZ = 150.0
MAX_SWEEP_OCTAVES = 4.5
MIN_SOURCE_S = 0.5
GAIN_DB = (-15.0, -3.0)
BACKGROUND_DB = (-60.0, -45.0)
PEAK = 0.95
# 15 ms raised-cosine fades: an abrupt onset is a broadband click, which would mimic `clicks`.
FADE_S = 0.015
# Close-position triads (just intonation): three lines within about 0.6 octave, i.e. 8-16 mel bins.
CHORD_SHAPES = {"major": (1.0, 5 / 4, 3 / 2), "minor": (1.0, 6 / 5, 3 / 2), "sus4": (1.0, 4 / 3, 3 / 2)}


@dataclass(frozen=True)
class InterleavedRange:
    """`[low, high]` cut into an odd number of equal log-width bands; train uses the even ones, test the odd ones.

    The first and last bands are training bands, so every held-out value lies between training values.
    """

    low: float
    high: float
    num_bands: int

    def __post_init__(self):
        if self.num_bands < 3 or self.num_bands % 2 == 0 or not 0 < self.low < self.high:
            raise ValueError(
                f"InterleavedRange({self.low}, {self.high}, {self.num_bands}) needs 0 < low < high and an odd "
                "number of bands >= 3: training bands at both ends, held-out bands between them."
            )

    def draw(self, rng: np.random.Generator, split: str) -> float:
        held_out = SPLITS.index(split)
        band = 2 * rng.integers(self.num_bands // 2 + 1 - held_out) + held_out  # 0, 2, .., n-1 or 1, 3, .., n-2
        position = (band + rng.random()) / self.num_bands  # in [0, 1) along the log range
        return float(self.low * (self.high / self.low) ** position)


HELD_OUT_RANGES: dict[str, dict[str, InterleavedRange]] = {
    "tone": {"frequency_hz": InterleavedRange(150.0, 4800.0, 21)},
    "chord": {"root_hz": InterleavedRange(400.0, 1600.0, 9)},
    "chirp_up": {"octaves_per_s": InterleavedRange(1.5, 8.0, 7)},
    "chirp_down": {"octaves_per_s": InterleavedRange(1.5, 8.0, 7)},
    "siren": {"center_hz": InterleavedRange(400.0, 2400.0, 11), "cycles_per_s": InterleavedRange(2.0, 8.0, 5)},
    "noise_burst": {"center_hz": InterleavedRange(300.0, 4800.0, 17)},
    "clicks": {"clicks_per_s": InterleavedRange(3.0, 24.0, 7)},
    "buzz": {"f0_hz": InterleavedRange(70.0, 320.0, 7)},
}


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(low * (high / low) ** rng.random())


# ---------------------------------------------------------------------------------------------
# Source parameters
# ---------------------------------------------------------------------------------------------


def draw_source_params(rng: np.random.Generator, class_name: str, split: str, duration_s: float = 2.0) -> dict:
    """Parameters of one source of `class_name` in a clip of `duration_s` seconds.

    Returns a dict with `class_name`, `onset_s`, `duration_s`, `gain` (linear amplitude) and the
    class's own parameters; those named in `HELD_OUT_RANGES` come from the split's bands.
    """
    if class_name not in SOUND_EVENT_CLASSES:
        raise ValueError(f"unknown sound-event class {class_name!r}; pick one of {SOUND_EVENT_CLASSES}.")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; use 'train' or 'test' (held-out parameter ranges).")
    params = {name: spec.draw(rng, split) for name, spec in HELD_OUT_RANGES[class_name].items()}
    length = rng.uniform(min(MIN_SOURCE_S, duration_s), duration_s)
    if class_name == "chord":
        params["shape"] = str(rng.choice(list(CHORD_SHAPES)))
        params["decay_s"] = float(rng.uniform(0.3, 0.8))
    elif class_name in ("chirp_up", "chirp_down"):
        length = min(length, MAX_SWEEP_OCTAVES / params["octaves_per_s"])
        span = params["octaves_per_s"] * length  # octaves covered
        low = _log_uniform(rng, MIN_SWEEP_HZ, MAX_FREQUENCY_HZ / 2**span)
        params["start_hz"] = low if class_name == "chirp_up" else low * 2**span
    elif class_name == "siren":
        params["depth_octaves"] = float(rng.uniform(0.25, 0.6))
    elif class_name == "noise_burst":
        params["bandwidth_octaves"] = float(rng.uniform(0.4, 1.2))
        bursts = rng.uniform(0.06, 0.25, size=rng.integers(1, 4))  # (bursts,) seconds
        params["burst_s"] = np.minimum(bursts, length).tolist()
        params["burst_onsets_s"] = (rng.random(len(bursts)) * (length - np.minimum(bursts, length))).tolist()
    elif class_name == "buzz":
        params["rolloff"] = float(rng.uniform(1.0, 1.5))
    params["onset_s"] = float(rng.uniform(0.0, duration_s - length))
    params["duration_s"] = float(length)
    params["gain"] = float(10 ** (rng.uniform(*GAIN_DB) / 20))
    params["class_name"] = class_name
    return params


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _fade(num_samples: int, fade: int) -> np.ndarray:
    """Raised-cosine fade in and out over `fade` samples each."""
    envelope = np.ones(num_samples)
    fade = min(fade, num_samples // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    envelope[:fade], envelope[num_samples - fade :] = ramp, ramp[::-1]
    return envelope


def _sine(frequency_hz, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit sinusoid with a (per-sample) instantaneous frequency, phase-continuous, random start phase."""
    phase = 2 * np.pi * np.cumsum(frequency_hz) / sampling_rate
    return np.sin(phase + rng.uniform(0, 2 * np.pi))


def _band_noise(num_samples: int, low_hz: float, high_hz: float, sampling_rate: int, rng) -> np.ndarray:
    """White noise band-passed to `[low_hz, high_hz]` in the FFT domain, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.fft.rfftfreq(num_samples, 1 / sampling_rate)
    spectrum[(frequencies < low_hz) | (frequencies > high_hz)] = 0
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def render_source(
    rng: np.random.Generator, params: dict, num_samples: int, sampling_rate: int = SAMPLING_RATE
) -> np.ndarray:
    """`(num_samples,)` float64 waveform of one source from `draw_source_params` (zero outside its span).

    Tonal sources peak at about `gain`; noise bursts and clicks are scaled to a comparable
    loudness on the spectrogram. `rng` supplies phases and noise samples.
    """
    start = min(int(round(params["onset_s"] * sampling_rate)), num_samples - 1)
    length = max(1, min(int(round(params["duration_s"] * sampling_rate)), num_samples - start))
    time = np.arange(length) / sampling_rate  # (length,) seconds since onset
    name = params["class_name"]
    fade = _fade(length, int(FADE_S * sampling_rate))
    if name == "tone":
        wave = _sine(np.full(length, params["frequency_hz"]), sampling_rate, rng) * fade
    elif name == "chord":
        ratios = np.asarray(CHORD_SHAPES[params["shape"]])
        phases = 2 * np.pi * (params["root_hz"] * ratios[:, None] * time[None, :] + rng.random((3, 1)))  # (3, length)
        wave = np.sin(phases).sum(axis=0) / 2 * np.exp(-time / params["decay_s"]) * fade  # struck, then dies away
    elif name in ("chirp_up", "chirp_down"):
        direction = 1.0 if name == "chirp_up" else -1.0
        frequency = params["start_hz"] * 2 ** (direction * params["octaves_per_s"] * time)
        wave = _sine(frequency, sampling_rate, rng) * fade
    elif name == "siren":
        swing = np.sin(2 * np.pi * (params["cycles_per_s"] * time + rng.random()))  # (length,) in [-1, 1]
        frequency = params["center_hz"] * 2 ** (params["depth_octaves"] * swing)
        wave = _sine(frequency, sampling_rate, rng) * fade
    elif name == "noise_burst":
        half_band = 2 ** (params["bandwidth_octaves"] / 2)
        low, high = params["center_hz"] / half_band, params["center_hz"] * half_band
        noise = _band_noise(length, low, high, sampling_rate, rng)
        envelope = np.zeros(length)
        for burst_s, onset_s in zip(params["burst_s"], params["burst_onsets_s"]):  # onsets from the source's start
            at = min(int(onset_s * sampling_rate), length - 1)
            burst = min(int(burst_s * sampling_rate), length - at)
            envelope[at : at + burst] = np.maximum(envelope[at : at + burst], _fade(burst, int(0.005 * sampling_rate)))
        wave = 0.7 * noise * envelope  # RMS 0.7: as loud as a tone of peak 1
    elif name == "clicks":
        period = sampling_rate / params["clicks_per_s"]
        onsets = np.arange(rng.uniform(0, period), length, period).astype(int)  # (clicks,)
        kernel_length = int(0.003 * sampling_rate)
        kernel = rng.standard_normal(kernel_length) * np.exp(-np.arange(kernel_length) / (0.0005 * sampling_rate))
        kernel *= 4 / np.abs(kernel).max()  # short clicks need a high peak to show on 25 ms frames
        wave = np.zeros(length + kernel_length)
        np.add.at(wave, onsets[:, None] + np.arange(kernel_length)[None, :], kernel[None, :])
        wave = wave[:length]
    elif name == "buzz":
        # One period of the harmonic stack in a table, read at the phase of f0 (band-limited to 6 kHz).
        harmonics = np.arange(1, int(MAX_FREQUENCY_HZ // params["f0_hz"]) + 1)  # (K,)
        table_phase = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
        table = (np.sin(harmonics[:, None] * table_phase[None, :]) * harmonics[:, None] ** -params["rolloff"]).sum(0)
        table /= np.abs(table).max()
        phase = (params["f0_hz"] * time + rng.random()) % 1.0
        wave = table[(phase * len(table)).astype(int)] * fade
    else:  # pragma: no cover - SOUND_EVENT_CLASSES and this function are kept in step
        raise ValueError(f"no renderer for class {name!r}")
    out = np.zeros(num_samples)
    out[start : start + length] = params["gain"] * wave
    return out


def synthesize_clip(
    rng: np.random.Generator,
    split: str,
    duration_s: float = 2.0,
    sampling_rate: int = SAMPLING_RATE,
    max_sources: int = 3,
) -> tuple[np.ndarray, list[str]]:
    """One clip: `(samples,)` float32 audio in [-0.95, 0.95] and its class names in `SOUND_EVENT_CLASSES` order.

    1 to `max_sources` sources of distinct, uniformly chosen classes over white background noise.
    """
    if sampling_rate < 2 * MAX_FREQUENCY_HZ:
        raise ValueError(
            f"sampling_rate={sampling_rate} cannot carry the {MAX_FREQUENCY_HZ:.0f} Hz components of the sources; "
            f"use at least {2 * MAX_FREQUENCY_HZ:.0f} Hz (AST models expect 16000)."
        )
    if not 1 <= max_sources <= len(SOUND_EVENT_CLASSES):
        raise ValueError(f"max_sources={max_sources}; use 1 to {len(SOUND_EVENT_CLASSES)} (one source per class).")
    num_samples = int(round(duration_s * sampling_rate))
    if num_samples < sampling_rate // 10:
        raise ValueError(f"duration_s={duration_s} is too short to hold a sound event; use at least 0.1 s.")
    count = int(rng.integers(1, max_sources + 1))
    classes = np.sort(rng.choice(len(SOUND_EVENT_CLASSES), size=count, replace=False))
    audio = rng.standard_normal(num_samples) * 10 ** (rng.uniform(*BACKGROUND_DB) / 20)
    for index in classes:
        params = draw_source_params(rng, SOUND_EVENT_CLASSES[index], split, duration_s)
        audio += render_source(rng, params, num_samples, sampling_rate)
    peak = float(np.abs(audio).max())
    if peak > PEAK:
        audio *= PEAK / peak
    return audio.astype(np.float32), [SOUND_EVENT_CLASSES[index] for index in classes]


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def _check_counts(num_train: int, num_test: int):
    for split, count in zip(SPLITS, (num_train, num_test)):
        if not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"asked for {count!r} {split} clips; pass a count >= 0.")


def _split_clips(num_clips: int, split: str, seed: int, duration_s: float, sampling_rate: int):
    """Yield `(audio, labels)` for clip 0, 1, ... of a split from the split's own random stream."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    for _ in range(num_clips):
        yield synthesize_clip(rng, split, duration_s=duration_s, sampling_rate=sampling_rate)


def make_sound_events(
    num_train: int, num_test: int, seed: int = 0, duration_s: float = 2.0, sampling_rate: int = SAMPLING_RATE
):
    """In-memory `DatasetDict` with `train` and `test` splits: `audio` (an `Audio` feature) and `labels` (class names).

    Clips are stored as float32 WAV bytes, so `ds["train"][i]["audio"]["array"]` decodes to the
    generated samples exactly (datasets' own encoding of `{"array": ...}` dicts writes 16-bit
    PCM through torchcodec, about ten times slower).
    """
    import datasets
    import soundfile

    _check_counts(num_train, num_test)
    features = datasets.Features(
        {"audio": datasets.Audio(sampling_rate=sampling_rate), "labels": datasets.List(datasets.Value("string"))}
    )
    splits = {}
    for split, count in zip(SPLITS, (num_train, num_test)):
        rows = {"audio": [], "labels": []}
        for audio, labels in _split_clips(count, split, seed, duration_s, sampling_rate):
            buffer = io.BytesIO()
            soundfile.write(buffer, audio, sampling_rate, format="WAV", subtype="FLOAT")
            rows["audio"].append({"bytes": buffer.getvalue(), "path": None})
            rows["labels"].append(labels)
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(splits)


def write_sound_events_audiofolder(
    output_dir, num_train: int, num_test: int, seed: int = 0, duration_s: float = 2.0,
    sampling_rate: int = SAMPLING_RATE,
) -> Path:
    """Write the dataset as an `audiofolder` and return its root.

    Layout: `train/` and `test/` with `clip_00000.wav`, ... (16-bit PCM) and a `metadata.jsonl`
    of `{"file_name": ..., "labels": [...]}` lines, plus `class_labels_indices.csv` in AudioSet's
    format (`index,mid,display_name`, the class name as both mid and display name). Load it with
    `datasets.load_dataset("audiofolder", data_dir=output_dir)`. Same clips as `make_sound_events`
    with the same arguments, up to 16-bit quantisation.
    """
    import soundfile

    _check_counts(num_train, num_test)
    root = Path(output_dir)
    for split, count in zip(SPLITS, (num_train, num_test)):
        directory = root / split
        directory.mkdir(parents=True, exist_ok=True)
        width = max(5, len(str(count - 1)))
        with open(directory / "metadata.jsonl", "w", encoding="utf-8") as metadata:
            for index, (audio, labels) in enumerate(_split_clips(count, split, seed, duration_s, sampling_rate)):
                file_name = f"clip_{index:0{width}d}.wav"
                soundfile.write(directory / file_name, audio, sampling_rate, subtype="PCM_16")
                metadata.write(json.dumps({"file_name": file_name, "labels": labels}) + "\n")
    with open(root / "class_labels_indices.csv", "w", encoding="utf-8", newline="") as labels_file:
        writer = csv.writer(labels_file)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows((index, name, name) for index, name in enumerate(SOUND_EVENT_CLASSES))
    return root



# ---------------------------------------------------------------------------------------------
# Spoken words: real speech synthesised by espeak-ng, with voices held out from training
# ---------------------------------------------------------------------------------------------

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng voice variants (`-v LANG+VARIANT`): the held-out split speaks only with voices never
# heard in training; the accent is drawn from ACCENTS in both splits.
TRAIN_VOICES: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt3", "Andy", "Denis")
TEST_VOICES: tuple[str, ...] = ("m6", "m7", "f4", "f5", "klatt2", "Annie", "Mike")
ACCENTS: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp")


def speak(word: str, voice: str, sampling_rate: int, pitch: int = 50, speed: int = 160) -> np.ndarray:
    """`word` spoken by espeak-ng (`voice` as LANG+VARIANT), resampled by sox to `sampling_rate`, float32 mono.

    espeak-ng renders at 22.05 kHz; sox (its default high-quality resampler) converts the rate, as
    a recording made at another rate would reach a dataset. Both come from Debian packages
    (`apt-get install espeak-ng sox`, which scripts/setup.sh runs).
    """
    import shutil
    import subprocess
    import tempfile

    import soundfile

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is not installed: run `apt-get install -y espeak-ng sox` (scripts/setup.sh does)"
            )
    with tempfile.TemporaryDirectory() as directory:
        spoken, resampled = Path(directory, "spoken.wav"), Path(directory, "resampled.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(spoken), word],
                       check=True, capture_output=True)
        # -D: no dither. sox dithers by default when it writes 16 bits after resampling, with random
        # noise, so the same seed would give a different data set on every run.
        subprocess.run(["sox", "-D", str(spoken), "-r", str(sampling_rate), "-c", "1", "-b", "16", str(resampled)],
                       check=True, capture_output=True)
        audio, rate = soundfile.read(resampled, dtype="float32")
    assert rate == sampling_rate, (rate, sampling_rate)
    return audio


def write_spoken_words_audiofolder(
    output_dir,
    num_train: int,
    num_test: int,
    seed: int = 0,
    duration_s: float = 1.0,
    sampling_rate: int = SAMPLING_RATE,
    words: tuple[str, ...] = DIGIT_WORDS,
) -> Path:
    """A single-label `audiofolder` of spoken words; the `test` split speaks with held-out voices.

    Each clip is one word of `words` from espeak-ng, with a voice variant (`TRAIN_VOICES` or
    `TEST_VOICES`), an accent from `ACCENTS`, pitch 20-80 and speed 120-200 words per minute drawn
    at random, placed at a random offset in a `duration_s` clip (cut when longer) over background
    noise at -60 to -40 dB and a gain of -12 to -1 dB, written as 16-bit PCM at `sampling_rate`
    (resampled by sox). Layout: `train/` and `test/` with a `metadata.jsonl` of
    `{"file_name", "label"}` (the word), the column an `audiofolder` reads as a ClassLabel.
    """
    import soundfile

    _check_counts(num_train, num_test)
    root = Path(output_dir)
    num_samples = int(round(duration_s * sampling_rate))
    for split, count, voices in (("train", num_train, TRAIN_VOICES), ("test", num_test, TEST_VOICES)):
        rng = np.random.default_rng([seed, SPLITS.index(split), 7])
        directory = root / split
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "metadata.jsonl", "w", encoding="utf-8") as metadata:
            for index in range(count):
                word = words[index % len(words)]  # balanced classes
                voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{voices[rng.integers(len(voices))]}"
                audio = speak(word, voice, sampling_rate, pitch=int(rng.integers(20, 81)),
                              speed=int(rng.integers(120, 201)))[:num_samples]
                audio = audio / max(np.abs(audio).max(), 1e-6) * 10 ** (rng.uniform(-12, -1) / 20)
                clip = rng.standard_normal(num_samples).astype(np.float32) * 10 ** (rng.uniform(-60, -40) / 20)
                offset = int(rng.integers(0, num_samples - len(audio) + 1))
                clip[offset : offset + len(audio)] += audio
                file_name = f"{word}_{index:05d}.wav"
                soundfile.write(directory / file_name, np.clip(clip, -1, 1), sampling_rate, subtype="PCM_16")
                metadata.write(json.dumps({"file_name": file_name, "label": word}) + "\n")
    return root

NOISE_BANDS = {"low": (100, 500), "mid": (900, 1800), "high": (3000, 6000)}


def write_noise_bands_audiofolder(output_dir, num_train: int, num_test: int, seed: int = 0,
                                  duration_s: float = 1.0, sampling_rate: int = SAMPLING_RATE) -> Path:
    """A small, easy multi-label `audiofolder`: each clip holds each of three noise bands with probability 1/2.

    Bands (`NOISE_BANDS`): low 100-500 Hz, mid 900-1800 Hz, high 3000-6000 Hz, each at 0.1 RMS over
    faint white noise (0.002 RMS); `metadata.jsonl` rows are `{"file_name", "labels": [...]}`. A
    tiny AST learns it in a few dozen steps: for tests that need a run to learn quickly.
    """
    import soundfile

    _check_counts(num_train, num_test)
    root = Path(output_dir)
    num_samples = int(round(duration_s * sampling_rate))
    frequencies = np.fft.rfftfreq(num_samples, 1 / sampling_rate)
    rng = np.random.default_rng(seed)
    for split, count in zip(SPLITS, (num_train, num_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for index in range(count):
            labels = [name for name in NOISE_BANDS if rng.random() < 0.5]
            clip = 0.002 * rng.standard_normal(num_samples)
            for name in labels:
                spectrum = np.fft.rfft(rng.standard_normal(num_samples))
                spectrum[(frequencies < NOISE_BANDS[name][0]) | (frequencies > NOISE_BANDS[name][1])] = 0
                band = np.fft.irfft(spectrum, num_samples)
                clip += 0.1 * band / band.std()
            file_name = f"clip_{index:03d}.wav"
            soundfile.write(root / split / file_name, clip.astype(np.float32), sampling_rate)
            rows.append(json.dumps({"file_name": file_name, "labels": labels}) + "\n")
        (root / split / "metadata.jsonl").write_text("".join(rows))
    return root


# ---------------------------------------------------------------------------------------------
# Command line

# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m hf_ast.training.synthetic",
        description="Write the synthetic sound-event dataset as an audiofolder (train/ and held-out test/).",
    )
    parser.add_argument("output_dir", help="directory to write train/, test/ and class_labels_indices.csv into")
    parser.add_argument("--num-train", type=int, default=3000, help="training clips (default 3000)")
    parser.add_argument("--num-test", type=int, default=500, help="held-out clips (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same clips")
    parser.add_argument("--duration", type=float, default=2.0, help="clip length in seconds (2.0 s = 198 frames)")
    args = parser.parse_args(argv)
    if args.num_train < 0 or args.num_test < 0:
        parser.error("--num-train and --num-test must be >= 0")
    if args.duration < 0.5:
        parser.error(f"--duration {args.duration} is shorter than one source (0.5 s); use at least 0.5")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    root = write_sound_events_audiofolder(args.output_dir, args.num_train, args.num_test, args.seed, args.duration)
    frames = num_frames(int(round(args.duration * SAMPLING_RATE)), *frame_geometry(SAMPLING_RATE))
    print(
        f"wrote {args.num_train} train and {args.num_test} held-out test clips of {args.duration} s "
        f"({frames} frames, {len(SOUND_EVENT_CLASSES)} classes) to {root}"
    )
    return 0


__all__ = [
    "HELD_OUT_RANGES",
    "SOUND_EVENT_CLASSES",
    "InterleavedRange",
    "SPLITS",
    "draw_source_params",
    "main",
    "make_sound_events",
    "render_source",
    "synthesize_clip",
    "write_sound_events_audiofolder",
    "speak",
    "write_spoken_words_audiofolder",
    "write_noise_bands_audiofolder",
]


if __name__ == "__main__":
    sys.exit(main())
