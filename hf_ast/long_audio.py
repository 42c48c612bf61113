"""Long audio: classify recordings of any length in batched sliding windows.

transformers' `pipeline("audio-classification")` featurises a recording as one clip, which the
feature extractor cuts to `max_length` frames (10.24 s for AudioSet models); it also accepts and
silently ignores `chunk_length_s`, so the rest of a longer recording is never heard. Here a
recording is cut into windows, each classified like a clip:

    window k = samples [k * hop, min(k * hop + chunk, N)),   hop = chunk_length_s - stride_length_s

- `chunk_length_s` is the window length; at most the model's input (`max_length` frames), and by
  default 10 s (AudioSet's clip length) or the model's input when that is shorter.
- `stride_length_s` is the *overlap* of consecutive windows, the audio a window shares with the
  next, as transformers' ASR chunking uses the word (there split into a left and a right part of
  `stride_length_s` each; here one number, the whole overlap). 0 (default) tiles the recording,
  `chunk_length_s / 2` halves the hop and doubles the cost and the time resolution.
- The last window ends where the recording ends and may be shorter. It is padded like any short
  clip, by the extractor's defaults (`padding="max_length"`, as the stock pipeline pads), so a
  recording no longer than one window gets exactly the stock pipeline's scores, and every window
  gets exactly the scores it gets alone through the extractor and the model. A last window shorter
  than one 25 ms analysis frame is dropped: the extractor cannot featurise it.
- Window scores follow the stock pipeline: sigmoid for `problem_type="multi_label_classification"`,
  raw logits for `"regression"`, softmax otherwise (`function_to_apply` overrides).
- The clip-level score of a class aggregates its window scores: `"max"` (default), the best
  window, reads "the sound occurs somewhere", as AudioSet's weak clip labels do; `"mean"`, each
  window counting once (the shorter last one too), reads "how much of the recording it fills".

Cost is linear in duration: features are extracted and the model runs `batch_size` windows at a
time, each window costing what a clip of its length costs.

This file is copied next to every saved classifier (`save_pretrained` in modeling_hf_ast.py imports
it), so `pipeline("audio-classification-long", model=directory, trust_remote_code=True)` works where
hf_ast is not installed. It imports from hf_ast only the feature extractor's file, which travels
with it, and torchaudio and matplotlib only inside try blocks, which transformers' import check for
remote code skips.
"""

import math
import numbers
import sys
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Pipeline
from transformers.pipelines.audio_classification import ffmpeg_read

from .configuration_hf_ast import id2label_with_int_keys
from .feature_extraction_hf_ast import HOP_MS, WINDOW_MS, frame_geometry, num_samples_for

LONG_AUDIO_TASK = "audio-classification-long"
AGGREGATES = ("max", "mean")
FUNCTIONS = ("softmax", "sigmoid", "none")
# AudioSet's clip length: round timestamps, and the model's full input (10.24 s) is barely longer.
DEFAULT_CHUNK_LENGTH_S = 10.0
DEFAULT_BATCH_SIZE = 8
# The plot marks every window's start and end on the time axis up to this many windows.
PLOT_MARKED_WINDOWS = 12


# ---------------------------------------------------------------------------------------------
# Arguments and window geometry
# ---------------------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_sampling_rate(sampling_rate) -> int:
    """The audio's rate as an int; a `ValueError` naming the fix unless it is a positive whole number of Hz."""
    whole = (
        not isinstance(sampling_rate, (bool, np.bool_))
        and isinstance(sampling_rate, numbers.Real)
        and math.isfinite(sampling_rate)
        and float(sampling_rate).is_integer()
    )
    if not whole or sampling_rate <= 0:
        raise ValueError(
            f"sampling_rate={sampling_rate!r}: pass the audio's rate as a positive whole number of Hz, e.g. 16000."
        )
    return int(sampling_rate)


def check_window_arguments(
    chunk_length_s=None, stride_length_s=0.0, aggregate="max", top_k=5, batch_size=DEFAULT_BATCH_SIZE,
    function_to_apply=None,
) -> None:
    """Raise a `ValueError` that names the problem and the fix for any bad sliding-window argument."""
    if chunk_length_s is not None and not (_is_number(chunk_length_s) and chunk_length_s > 0):
        raise ValueError(
            f"chunk_length_s={chunk_length_s!r}: the window length must be a positive number of seconds, e.g. "
            "chunk_length_s=10.0 (None: 10 s, or the model's input length when shorter)."
        )
    if not (_is_number(stride_length_s) and stride_length_s >= 0):
        raise ValueError(
            f"stride_length_s={stride_length_s!r}: the overlap of consecutive windows must be a number of seconds "
            ">= 0 (0: the windows tile the recording)."
        )
    if chunk_length_s is not None and stride_length_s >= chunk_length_s:
        raise ValueError(
            f"stride_length_s={stride_length_s} must be smaller than chunk_length_s={chunk_length_s}: it is the "
            "overlap of consecutive windows, and the hop between window starts is chunk_length_s - stride_length_s. "
            f"Use e.g. stride_length_s={chunk_length_s / 2:g} for half-overlapping windows, or 0 for none."
        )
    if aggregate not in AGGREGATES:
        raise ValueError(
            f"aggregate={aggregate!r} is not supported; use 'max' (per class the best window's score: the sound "
            "occurs somewhere) or 'mean' (per class the average over windows)."
        )
    if top_k is not None and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0):
        raise ValueError(f"top_k={top_k!r}: pass a positive number of labels, or None for all of them.")
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0):
        raise ValueError(f"batch_size={batch_size!r}: pass a positive number of windows per forward pass, e.g. 8.")
    if function_to_apply is not None and function_to_apply not in FUNCTIONS:
        raise ValueError(
            f"function_to_apply={function_to_apply!r}; use 'softmax', 'sigmoid', 'none' (raw logits), or None for "
            "the model's own (sigmoid for multi-label models, softmax otherwise)."
        )


def window_samples(feature_extractor, chunk_length_s: float | None, stride_length_s: float) -> tuple[int, int]:
    """`(window, hop)` in samples at the extractor's rate, checked against the model's input length."""
    rate = feature_extractor.sampling_rate
    # Kaldi framing, as both hf-ast's and transformers' extractors frame AST's filterbank.
    frame, frame_hop = frame_geometry(rate)
    max_frames = getattr(feature_extractor, "max_length", None)
    longest = num_samples_for(max_frames, frame, frame_hop) if max_frames else None  # samples of max_length frames
    if chunk_length_s is None:
        chunk_length_s = DEFAULT_CHUNK_LENGTH_S if longest is None else min(DEFAULT_CHUNK_LENGTH_S, longest / rate)
    window = round(chunk_length_s * rate)
    if longest is not None and window > longest:
        raise ValueError(
            f"chunk_length_s={chunk_length_s} is longer than the model's input: the feature extractor cuts every clip "
            f"to max_length={max_frames} frames ({longest / rate:g} s), so the rest of each window would be ignored. "
            f"Use chunk_length_s <= {longest / rate:g}."
        )
    if window < frame:
        raise ValueError(
            f"chunk_length_s={chunk_length_s} is shorter than one {WINDOW_MS} ms analysis frame; use windows of at "
            f"least {frame / rate:g} s (and a few seconds to give the model context)."
        )
    hop = window - round(stride_length_s * rate)
    if hop < 1:
        raise ValueError(
            f"stride_length_s={stride_length_s} leaves no hop between windows of chunk_length_s={chunk_length_s}; "
            "the stride is the overlap of consecutive windows and must be smaller than chunk_length_s."
        )
    return window, hop


def window_bounds(num_samples: int, window: int, hop: int, min_samples: int) -> list[tuple[int, int]]:
    """Sample ranges `[start, end)` of the windows over `num_samples` samples.

    Windows start every `hop` samples until one reaches the end; the last is cut at the end, and
    dropped when it is shorter than `min_samples` (one analysis frame) and not the only one.
    """
    bounds = [(0, min(window, num_samples))]
    while bounds[-1][1] < num_samples:
        start = bounds[-1][0] + hop
        bounds.append((start, min(start + window, num_samples)))
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_samples:
        bounds.pop()
    return bounds


def mono_waveform(audio, sampling_rate: int, target_rate: int, feature_extractor=None) -> np.ndarray:
    """`(samples,)` or `(channels, samples)` float audio -> 1-D float32 numpy at `target_rate` (channels averaged).

    Checked as a whole, so a fault is named by its time in the recording, not by a window. Resampled
    by `feature_extractor`'s own resampler when it has one (hf-ast's: FFmpeg's, as datasets and
    file paths), so a recording scores as its windows would through the extractor; else torchaudio.
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.dtype.kind != "f":
        raise ValueError(
            f"audio has dtype {audio.dtype}; pass float samples in [-1, 1] (for int16 PCM: audio / 32768)."
        )
    if audio.ndim == 2:
        if audio.shape[0] > audio.shape[1]:
            raise ValueError(
                f"audio has shape {audio.shape}, which reads as {audio.shape[0]} channels of {audio.shape[1]} "
                "samples; pass (channels, samples), e.g. audio.T for a (samples, channels) array."
            )
    elif audio.ndim != 1:
        raise ValueError(f"audio has shape {audio.shape}; pass mono (samples,) or (channels, samples) audio.")
    finite = np.isfinite(audio)  # before the down-mix, which could overflow large finite samples to inf
    if audio.ndim == 2:
        finite = finite.all(axis=0)
        audio = audio.mean(axis=0)  # down-mix before cutting windows, as the extractor does per clip
    if not finite.all():
        first = int(np.argmin(finite))
        raise ValueError(
            f"audio has NaN or infinite samples, the first at {first / sampling_rate:.3f} s (sample {first}); clean "
            "the recording (e.g. np.nan_to_num) or cut that part out before classifying it."
        )
    audio = audio.astype(np.float32, copy=False)
    if sampling_rate != target_rate and hasattr(feature_extractor, "_resample"):
        audio = feature_extractor._resample([torch.from_numpy(audio)], sampling_rate)[0].numpy()
    elif sampling_rate != target_rate:
        try:
            import torchaudio.functional as audio_functional
        except ImportError:
            raise ImportError(
                f"audio at {sampling_rate} Hz must be resampled to {target_rate} Hz, which needs torchaudio "
                "(pip install torchaudio); or resample it yourself."
            ) from None
        audio = audio_functional.resample(torch.from_numpy(audio), sampling_rate, target_rate).numpy()
    return audio


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def default_function(config) -> str:
    """The stock audio-classification pipeline's rule for turning logits into scores."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification":
        return "sigmoid"
    return "softmax"


def scores_from_logits(logits: torch.Tensor, function: str) -> torch.Tensor:
    """`(..., num_labels)` logits -> scores: "softmax" over the labels, "sigmoid" per label, or "none" (the logits)."""
    if function == "softmax":
        return logits.softmax(dim=-1)
    if function == "sigmoid":
        return logits.sigmoid()
    return logits


@dataclass
class WindowScores:
    """Scores of one recording's windows, and the clip-level aggregate over them."""

    scores: torch.Tensor  # (windows, num_labels), float32 on the CPU
    timestamps: list[tuple[float, float]]  # (start, end) of each window in seconds
    id2label: dict[int, str]

    def aggregate(self, aggregate: str = "max") -> torch.Tensor:
        """`(num_labels,)` clip-level scores: per class the max (default) or the mean over windows."""
        check_window_arguments(aggregate=aggregate)
        return self.scores.amax(dim=0) if aggregate == "max" else self.scores.mean(dim=0)

    def to_dict(self, top_k: int | None = 5, aggregate: str = "max") -> dict:
        """The pipeline's output: `{"labels": [...], "chunks": [{"timestamp": (start, end), "labels": [...]}, ...]}`.

        Each `labels` list holds the `top_k` best `{"score", "label"}` dicts, best first, as the stock
        pipeline returns them: the clip-level aggregate at the top, each window's own in `chunks`.
        """
        check_window_arguments(aggregate=aggregate, top_k=top_k)
        k = self.scores.shape[1] if top_k is None else min(top_k, self.scores.shape[1])
        return {
            "labels": self._top(self.aggregate(aggregate), k),
            "chunks": [
                {"timestamp": timestamp, "labels": self._top(row, k)}
                for timestamp, row in zip(self.timestamps, self.scores)
            ],
        }

    def _top(self, scores: torch.Tensor, k: int) -> list[dict]:
        values, ids = scores.topk(k)
        return [{"score": value, "label": self.id2label[index]} for value, index in zip(values.tolist(), ids.tolist())]


@torch.no_grad()
def score_windows(
    model,
    feature_extractor,
    audio,
    sampling_rate: int,
    chunk_length_s: float | None = None,
    stride_length_s: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    function_to_apply: str | None = None,
) -> WindowScores:
    """Score every window of a recording of any length (module docstring: windows, last window, scores).

    Args:
        model: an audio classifier (`HfAstForAudioClassification`, or any `AutoModelForAudioClassification`
            whose extractor gives `input_values`), in eval mode.
        feature_extractor: its extractor; each window is featurised with the extractor's defaults.
        audio: `(samples,)` or `(channels, samples)` float numpy array or tensor (channels are averaged).
        sampling_rate: rate of `audio`; resampled to the extractor's rate (by the extractor) when different.
        chunk_length_s: window length in seconds; None: 10 s, or the model's input when shorter.
        stride_length_s: overlap of consecutive windows in seconds; the hop is `chunk_length_s - stride_length_s`.
        batch_size: windows featurised and run through the model together.
        function_to_apply: "softmax", "sigmoid" or "none"; None: the stock pipeline's choice for the model.
    """
    check_window_arguments(chunk_length_s, stride_length_s, batch_size=batch_size, function_to_apply=function_to_apply)
    rate = feature_extractor.sampling_rate
    waveform = mono_waveform(audio, sampling_rate, rate, feature_extractor)
    window, hop = window_samples(feature_extractor, chunk_length_s, stride_length_s)
    frame, _ = frame_geometry(rate)
    if waveform.shape[0] < frame:
        raise ValueError(
            f"audio has {waveform.shape[0]} samples at {rate} Hz, shorter than one {WINDOW_MS} ms analysis frame "
            f"({frame} samples); pad it with silence to at least {frame} samples or drop it."
        )
    bounds = window_bounds(waveform.shape[0], window, hop, frame)
    function = function_to_apply or default_function(model.config)

    scores = []
    for first in range(0, len(bounds), batch_size):
        clips = [waveform[start:end] for start, end in bounds[first : first + batch_size]]
        try:
            features = feature_extractor(clips, sampling_rate=rate, return_tensors="pt")
        except ValueError:
            _raise_for_window(feature_extractor, waveform, bounds[first : first + batch_size], rate)
            raise
        inputs = {name: value.to(model.device) for name, value in features.items()}
        inputs["input_values"] = inputs["input_values"].to(model.dtype)
        logits = model(**inputs).logits.float()  # (windows in this batch, num_labels)
        scores.append(scores_from_logits(logits, function).cpu())
    return WindowScores(
        scores=torch.cat(scores),  # (windows, num_labels)
        timestamps=[(start / rate, end / rate) for start, end in bounds],
        id2label=id2label_with_int_keys(model.config.id2label),
    )


def _raise_for_window(feature_extractor, waveform: np.ndarray, bounds, rate: int) -> None:
    """Re-raise the extractor's error for the first window that fails alone, named by its time in the recording.

    The batched call names a window by its index in the batch ("audio clip 2"), which the caller never saw.
    """
    for start, end in bounds:
        try:
            feature_extractor(waveform[start:end], sampling_rate=rate, return_tensors="pt")
        except ValueError as error:
            window = f"{start / rate:.2f}-{end / rate:.2f} s"
            raise ValueError(f"the window at {window} of the recording: {error}") from None


def classify_long_audio(
    model,
    feature_extractor,
    audio,
    sampling_rate: int,
    chunk_length_s: float | None = None,
    stride_length_s: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    aggregate: str = "max",
    top_k: int | None = 5,
    function_to_apply: str | None = None,
) -> dict:
    """Classify a recording of any length in sliding windows; the pipeline's output without a pipeline.

    Returns `{"labels": [{"score", "label"}, ...], "chunks": [{"timestamp": (start_s, end_s), "labels": [...]}, ...]}`:
    the `top_k` classes of the clip by `aggregate` ("max" or "mean" over windows), and each window's
    own `top_k`. Arguments as `score_windows`.
    """
    check_window_arguments(chunk_length_s, stride_length_s, aggregate, top_k, batch_size, function_to_apply)
    result = score_windows(
        model, feature_extractor, audio, sampling_rate, chunk_length_s, stride_length_s, batch_size, function_to_apply
    )
    return result.to_dict(top_k=top_k, aggregate=aggregate)


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------


class LongAudioClassificationPipeline(Pipeline):
    """`pipeline("audio-classification-long")`: audio classification of recordings of any length.

    Inputs as the stock audio-classification pipeline: a file path or URL (decoded with ffmpeg), bytes,
    a numpy array or tensor at the extractor's rate, a `{"array" or "raw", "sampling_rate"}` dict
    (resampled), or a torchcodec `AudioDecoder` (a `datasets` audio column). Call-time options:
    `chunk_length_s`, `stride_length_s` (the overlap), `batch_size` (windows per forward pass),
    `top_k` (None: all labels), `aggregate` ("max" or "mean") and `function_to_apply`. Options given
    to the constructor stay until a call overrides them. The output is `WindowScores.to_dict`'s.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def __call__(self, inputs, **kwargs):
        # `batch_size` counts windows of one recording per forward pass. transformers' own batching,
        # which pads whole recordings into one tensor, is kept off (recordings go one at a time).
        batch_size = kwargs.pop("batch_size", None)
        if batch_size is None:
            batch_size = self._batch_size if self._batch_size is not None else DEFAULT_BATCH_SIZE
        return super().__call__(inputs, batch_size=1, window_batch_size=batch_size, **kwargs)

    def _sanitize_parameters(self, **kwargs):
        forward_names = ("chunk_length_s", "stride_length_s", "window_batch_size", "function_to_apply")
        postprocess_names = ("top_k", "aggregate")
        unknown = sorted(set(kwargs) - set(forward_names) - set(postprocess_names))
        if unknown:
            raise ValueError(
                f"{LONG_AUDIO_TASK} got unknown arguments {unknown}; it takes chunk_length_s, stride_length_s, "
                "batch_size, top_k, aggregate and function_to_apply."
            )
        check_window_arguments(
            kwargs.get("chunk_length_s"), kwargs.get("stride_length_s", 0.0), kwargs.get("aggregate", "max"),
            kwargs.get("top_k", 5), kwargs.get("window_batch_size", DEFAULT_BATCH_SIZE),
            kwargs.get("function_to_apply"),
        )
        forward_params = {name: kwargs[name] for name in forward_names if name in kwargs}
        postprocess_params = {name: kwargs[name] for name in postprocess_names if name in kwargs}
        return {}, forward_params, postprocess_params

    def preprocess(self, inputs):
        rate = self.feature_extractor.sampling_rate
        if isinstance(inputs, str):
            if inputs.startswith(("http://", "https://")):
                from huggingface_hub.utils import httpx

                inputs = httpx.get(inputs, follow_redirects=True).content
            else:
                with open(inputs, "rb") as file:
                    inputs = file.read()
        if isinstance(inputs, bytes):
            inputs = ffmpeg_read(inputs, rate)  # mono float32 at the extractor's rate
        torchcodec = sys.modules.get("torchcodec")  # loaded already whenever the input is an AudioDecoder
        if torchcodec is not None and isinstance(inputs, torchcodec.decoders.AudioDecoder):
            samples = inputs.get_all_samples()
            inputs = {"array": samples.data, "sampling_rate": samples.sample_rate}
        if isinstance(inputs, dict):
            if "sampling_rate" not in inputs or not ("array" in inputs or "raw" in inputs):
                raise ValueError(
                    f"a dict input needs the audio under 'array' (or 'raw') and its 'sampling_rate'; got keys "
                    f"{sorted(inputs)}."
                )
            array = inputs["array"] if "array" in inputs else inputs["raw"]
            return {"audio": array, "sampling_rate": inputs["sampling_rate"]}
        if not isinstance(inputs, (np.ndarray, torch.Tensor)):
            raise ValueError(
                f"{LONG_AUDIO_TASK} got a {type(inputs).__name__}; pass a file path, bytes, a numpy array or tensor "
                f"at {rate} Hz, or a dict with 'array' and 'sampling_rate'."
            )
        return {"audio": inputs, "sampling_rate": rate}

    def _forward(
        self, model_inputs, chunk_length_s=None, stride_length_s=0.0, window_batch_size=DEFAULT_BATCH_SIZE,
        function_to_apply=None,
    ):
        return score_windows(
            self.model, self.feature_extractor, model_inputs["audio"], model_inputs["sampling_rate"],
            chunk_length_s=chunk_length_s, stride_length_s=stride_length_s, batch_size=window_batch_size,
            function_to_apply=function_to_apply,
        )

    def postprocess(self, model_outputs: WindowScores, top_k=5, aggregate="max"):
        return model_outputs.to_dict(top_k=top_k, aggregate=aggregate)


def custom_pipelines_entry() -> dict:
    """The `custom_pipelines` entry a saved model's config.json declares for transformers' `pipeline()`."""
    module = LongAudioClassificationPipeline.__module__.split(".")[-1]
    return {
        LONG_AUDIO_TASK: {
            "impl": f"{module}.{LongAudioClassificationPipeline.__name__}",
            "pt": ["AutoModelForAudioClassification"],
            "type": "audio",
        }
    }


# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------


def plot_long_audio(
    window_scores: WindowScores,
    audio,
    sampling_rate: int,
    feature_extractor,
    path,
    top_k: int = 5,
    aggregate: str = "max",
    title: str | None = None,
):
    """Save a PNG of the recording's log-mel spectrogram above its `top_k` classes' window scores over time.

    The classes are the clip's best by `aggregate`; each is drawn as a bar over every window's
    time span, joined at the window centres. `feature_extractor` must be an `HfAstFeatureExtractor`
    (it featurises the whole recording, unpadded and unnormalised). Returns `path`.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_long_audio needs matplotlib: pip install matplotlib (or hf-ast[train]).") from None
    check_window_arguments(aggregate=aggregate, top_k=top_k)
    rate = feature_extractor.sampling_rate
    waveform = mono_waveform(audio, sampling_rate, rate, feature_extractor)
    spectrogram = feature_extractor(
        waveform, sampling_rate=rate, padding="do_not_pad", truncation=False, do_normalize=False, return_tensors="np"
    )["input_values"][0]  # (frames, mel bins), natural-log mel energies
    clip_scores = window_scores.aggregate(aggregate)
    top = clip_scores.topk(min(top_k, clip_scores.numel())).indices.tolist()
    starts = [start for start, _ in window_scores.timestamps]
    ends = [end for _, end in window_scores.timestamps]
    centres = [(start + end) / 2 for start, end in window_scores.timestamps]

    # Figure + Agg canvas rather than pyplot: no global backend switch, nothing left open.
    figure = Figure(figsize=(10, 6), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    spectrogram_axis, score_axis = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    frame_hop_s = HOP_MS / 1000
    spectrogram_axis.imshow(
        spectrogram.T, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
        extent=(0, spectrogram.shape[0] * frame_hop_s, 0, spectrogram.shape[1]),
    )
    spectrogram_axis.set_ylabel("mel bin")
    spectrogram_axis.set_title(
        title or f"log-mel spectrogram, {waveform.shape[0] / rate:.2f} s in {len(starts)} windows"
    )
    for rank, index in enumerate(top):
        color = f"C{rank % 10}"
        series = window_scores.scores[:, index].tolist()
        score_axis.hlines(series, starts, ends, colors=color, linewidth=3, alpha=0.6)
        score_axis.plot(centres, series, "o-", color=color, linewidth=1, markersize=3,
                        label=f"{window_scores.id2label[index]} ({aggregate} {clip_scores[index]:.2f})")
    if len(starts) <= PLOT_MARKED_WINDOWS:  # window starts and ends as ticks, while they fit
        for start in starts[1:]:
            score_axis.axvline(start, color="0.85", linewidth=0.8, zorder=0)
        score_axis.set_xticks(sorted(set(starts) | set(ends)))
    score_axis.set_xlim(0, max(ends))
    if window_scores.scores.min() >= 0 and window_scores.scores.max() <= 1:  # probabilities
        score_axis.set_ylim(0, 1.05)
    score_axis.set_xlabel("time (s)")
    score_axis.set_ylabel("window score")
    score_axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    figure.savefig(path)
    return path


__all__ = [
    "LONG_AUDIO_TASK",
    "LongAudioClassificationPipeline",
    "WindowScores",
    "check_window_arguments",
    "classify_long_audio",
    "custom_pipelines_entry",
    "plot_long_audio",
    "score_windows",
    "scores_from_logits",
    "window_bounds",
]
