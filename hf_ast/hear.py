"""HEAR 2021 API: any hf-ast or transformers AST checkpoint as a HEAR embedding module.

HEAR (Holistic Evaluation of Audio Representations, Turian et al. 2022) evaluates and reuses
embedding models through three functions, which this module provides:

    model = load_model("MIT/ast-finetuned-audioset-10-10-0.4593")  # hub id, directory or a file in one
    scene = get_scene_embeddings(audio, model)                # (n_sounds, model.scene_embedding_size)
    frames, timestamps = get_timestamp_embeddings(audio, model)
    # frames: (n_sounds, n_timestamps, model.timestamp_embedding_size), timestamps: (n_sounds, n_timestamps) ms

`audio` is a float tensor `(n_sounds, n_samples)` of mono audio in [-1, 1] at `model.sample_rate`,
of any length; outputs are float32 on the model's device. `hear-validator hf_ast.hear -m DIR`
runs HEAR's own checker on it (it imports tensorflow; tests/test_hear.py runs it without).

Every clip is featurised once (the extractor's Kaldi log-mel, 25 ms frames every 10 ms); what
the encoder runs on are slices of those frames, which equal the frames of the cut audio, since a
frame depends on its own 25 ms only. Slices of one length run together, `batch_size` at a time,
padding-free: nothing is padded except a slice shorter than one patch, as the extractor pads it.

Scene embeddings. `scene_pooling="cls"` (default): the encoder's `pooler_output`, the mean of the
final cls and distillation states, i.e. what the classifier head reads. `"patches"`: the mean of
the final patch tokens. Clips up to the model's input (`max_length` frames, 10.24 s for AudioSet
models) run whole, as they are; longer clips run in passes of the model's input (starting every
`t * time_stride` frames, `t` the patch columns of one input, the last ending with the clip),
averaged with weights proportional to their frame counts.

Timestamp embeddings, every `hop_ms` (50 ms by default, HEAR's suggested upper bound), at
`t_k = k * hop_ms` for `k = 0 .. floor(duration / hop_ms)`, so they start at 0 and the last one
is less than one hop before the end. Two methods:

- `timestamp_method="windows"` (default): the `pooler_output` of a window of `window_s` seconds
  (0.35 s by default; whole frames) centred at each timestamp, to within 5 ms (exactly, up to
  Kaldi's 2.5 ms frame offset, when `hop_ms` is a multiple of 10). Windows are cut at the clip's
  edges rather than padded, so the model hears only real audio; the first and last
  `window_s / 2` seconds get windows that reach to one side only.
- `timestamp_method="patches"`: the scene passes above, then the final patch tokens averaged over
  frequency, one vector per patch column (every `time_stride` frames: 100 ms for AudioSet
  models, 160 ms for the demo's), linearly interpolated to the timestamps from the columns'
  centres (nearest column beyond the first and last). Consecutive passes continue one regular
  column spacing.

Which is better, measured by `benchmarks/bench_hear_timestamps.py` on a frame-level task built
for it: 6 s recordings of 2-4 generated sound events (`hf_ast.training.synthetic`'s eight classes, 0.5-1.5 s
each) at random times, labelled every 50 ms; a linear probe per class (logistic regression on
standardised embeddings) fitted on 160 recordings and tested on 80 with the held-out source
parameters; the offline demo's model (2 s input, patch stride 16, held-out clip mAP 0.935). mAP over
all test timestamps, and over those within 250 ms of an event's onset or offset ("boundary");
two data seeds; seconds per minute of audio on 2 idle Xeon cores, best of 3:

    method                    mAP seed 0 / 1   boundary mAP 0 / 1   s per min
    windows 0.25 s            0.759 / -        0.740 / -            0.35
    windows 0.35 s (default)  0.842 / 0.818    0.812 / 0.792        0.50
    windows 0.5 s             0.809 / 0.792    0.775 / 0.761        0.68
    windows 1 s               0.746 / 0.720    0.702 / 0.674        1.31
    windows 1.98 s (input)    0.546 / -        0.513 / -            2.55
    patches                   0.703 / 0.754    0.687 / 0.736        0.08
    log-mel frame, no model   0.334 / 0.325    0.344 / 0.343        -

Short windows centred on the timestamp win: each embedding hears its own neighbourhood, as the
pooled output the model was trained to produce; a window of the whole input (1.98 s) blurs events
together, and the patch columns, mixed by attention across the whole pass and 160 ms apart here,
fall in between, at a sixth of the cost of the default. The best length is the model's and the
task's: 0.35 s (two patch columns of this model) was best on both seeds, but it was measured on
this one model; tune `window_s` for another (`bench_hear_timestamps.py --model`).

`load_model("")` has no downloadable default (this machine may be offline): it loads
`$HF_AST_HEAR_MODEL` if set, else the model the offline demo trains
(`demo_output/ast-sound-events`, in the working directory or this repository), and otherwise
raises an error that names both ways to get one. It never falls back to random weights.
"""

import math
import os
from pathlib import Path

import torch
from torch import nn

from .configuration_hf_ast import HfAstConfig
from .feature_extraction_hf_ast import HfAstFeatureExtractor, frame_geometry, num_samples_for
from .modeling_hf_ast import NUM_PREFIX_TOKENS, HfAstForAudioClassification, HfAstModel

# HEAR 2021 rules: "Your model must work with audio at one of the following four sample rates"
# (hearvalidator's ACCEPTABLE_SAMPLE_RATE). The later hear-api page adds 32000; the validator does not.
HEAR_SAMPLE_RATES = (16000, 22050, 44100, 48000)
# HEAR suggests a hop of at most 50 ms between timestamp embeddings (a 50 ms onset tolerance).
DEFAULT_HOP_MS = 50.0
DEFAULT_WINDOW_S = 0.35  # best of 0.25-1.98 s on the demo model (module docstring)
DEFAULT_BATCH_SIZE = 64
SCENE_POOLINGS = ("cls", "patches")
TIMESTAMP_METHODS = ("windows", "patches")
MODEL_ENV = "HF_AST_HEAR_MODEL"
DEMO_MODEL = Path("demo_output") / "ast-sound-events"


def default_model_dirs() -> list[Path]:
    """Where `load_model("")` looks: `$HF_AST_HEAR_MODEL`, then the demo's model here and in this repository."""
    candidates = [Path(os.environ[MODEL_ENV])] if os.environ.get(MODEL_ENV) else []
    return candidates + [Path.cwd() / DEMO_MODEL, Path(__file__).resolve().parent.parent / DEMO_MODEL]


class HearAstModel(nn.Module):
    """An AST encoder with its feature extractor and the HEAR attributes.

    `sample_rate` is the rate `audio` must have: the one asked for in `load_model(..., sample_rate=)`,
    else the extractor's own when HEAR accepts it (16 kHz for every AST; otherwise the next HEAR rate
    above it); audio at another rate than the extractor's is resampled inside (torchaudio, on the
    model's device). `scene_embedding_size` and `timestamp_embedding_size` are the encoder's
    `hidden_size`.
    """

    def __init__(
        self,
        encoder: HfAstModel,
        feature_extractor: HfAstFeatureExtractor,
        sample_rate: int | None = None,
        scene_pooling: str = "cls",
        timestamp_method: str = "windows",
        hop_ms: float = DEFAULT_HOP_MS,
        window_s: float = DEFAULT_WINDOW_S,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        super().__init__()
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor
        config: HfAstConfig = encoder.config
        if feature_extractor.num_mel_bins != config.num_mel_bins:
            raise ValueError(
                f"the feature extractor gives {feature_extractor.num_mel_bins} mel bins but the model takes "
                f"{config.num_mel_bins}; load both from the same checkpoint."
            )
        if scene_pooling not in SCENE_POOLINGS:
            raise ValueError(
                f"scene_pooling={scene_pooling!r}; use 'cls' (the mean of the final cls and distillation states, what "
                "the classifier reads) or 'patches' (the mean of the final patch tokens)."
            )
        if timestamp_method not in TIMESTAMP_METHODS:
            raise ValueError(
                f"timestamp_method={timestamp_method!r}; use 'windows' (a window centred at each timestamp) or "
                "'patches' (the encoder's patch columns, interpolated)."
            )
        if not (isinstance(hop_ms, (int, float)) and math.isfinite(hop_ms) and hop_ms > 0):
            raise ValueError(f"hop_ms={hop_ms!r}: pass a positive number of milliseconds, e.g. 50.")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size={batch_size!r}: pass a positive number of slices per forward pass, e.g. 64.")
        native = feature_extractor.sampling_rate
        if sample_rate is None:
            sample_rate = native if native in HEAR_SAMPLE_RATES else min(
                (rate for rate in HEAR_SAMPLE_RATES if rate >= native), default=HEAR_SAMPLE_RATES[-1]
            )
        if sample_rate not in HEAR_SAMPLE_RATES:
            raise ValueError(
                f"sample_rate={sample_rate!r} is not one of HEAR's rates {HEAR_SAMPLE_RATES}; pick one of them (audio "
                f"is resampled to the model's {native} Hz inside)."
            )
        # Plain ints, as HEAR's validator checks `isinstance(..., int)`.
        self.sample_rate = int(sample_rate)
        self.scene_embedding_size = int(config.hidden_size)
        self.timestamp_embedding_size = int(config.hidden_size)
        self.scene_pooling = scene_pooling
        self.timestamp_method = timestamp_method
        self.hop_ms = float(hop_ms)
        self.batch_size = batch_size

        # Geometry in Kaldi frames (25 ms every 10 ms): frame i is centred at i * 10 + 12.5 ms.
        self.frame, self.frame_hop = frame_geometry(native)
        if not (isinstance(window_s, (int, float)) and math.isfinite(window_s)):
            raise ValueError(f"window_s={window_s!r}: pass the timestamp window length in seconds, e.g. 0.35.")
        self.window_frames = feature_extractor.num_frames(round(window_s * native))
        if not config.patch_size <= self.window_frames <= config.max_length:
            shortest = num_samples_for(config.patch_size, self.frame, self.frame_hop) / native
            longest = num_samples_for(config.max_length, self.frame, self.frame_hop) / native
            raise ValueError(
                f"window_s={window_s} is outside what the model can take: at least one patch ({shortest:g} s) and at "
                f"most its input of max_length={config.max_length} frames ({longest:g} s)."
            )
        self.window_s = num_samples_for(self.window_frames, self.frame, self.frame_hop) / native

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Scene embeddings, as `get_scene_embeddings(audio, self)`."""
        return get_scene_embeddings(audio, self)

    # -- internals --------------------------------------------------------------------------

    def features(self, audio) -> tuple[torch.Tensor, float]:
        """HEAR's `(n_sounds, n_samples)` float audio -> log-mel `(n_sounds, frames, bins)` and the duration in ms."""
        if not isinstance(audio, torch.Tensor):
            raise ValueError(
                f"audio is a {type(audio).__name__}; HEAR passes a float tensor (n_sounds, n_samples), e.g. "
                "torch.from_numpy(array)."
            )
        if audio.dim() != 2:
            fix = " (one sound: audio[None])" if audio.dim() == 1 else " (average the channels to mono first)"
            raise ValueError(
                f"audio has shape {tuple(audio.shape)}; HEAR's API takes (n_sounds, n_samples) mono audio{fix}."
            )
        if not audio.is_floating_point():
            raise ValueError(
                f"audio has dtype {audio.dtype}; pass float samples in [-1, 1] (for int16 PCM: audio / 32768)."
            )
        if audio.shape[0] == 0 or audio.shape[1] == 0:
            raise ValueError(f"audio has shape {tuple(audio.shape)}; pass at least one sound of at least one sample.")
        duration_ms = 1000.0 * audio.shape[1] / self.sample_rate
        audio = audio.detach().to(self.device, torch.float32)
        native = self.feature_extractor.sampling_rate
        if self.sample_rate != native:
            import torchaudio.functional as audio_functional

            audio = audio_functional.resample(audio, self.sample_rate, native)  # on the model's device
        if audio.shape[1] < self.frame:
            # Shorter than one 25 ms analysis frame: HEAR asks for any length, the filterbank needs one frame.
            audio = nn.functional.pad(audio, (0, self.frame - audio.shape[1]))
        features = self.feature_extractor(
            list(audio), sampling_rate=native, padding="longest", truncation=False, return_tensors="pt",
            device=self.device,
        )["input_values"]  # (n, frames, bins): equal lengths, so nothing is padded except to one patch
        return features[:, : self.feature_extractor.num_frames(audio.shape[1])], duration_ms

    def encode(
        self, features: torch.Tensor, spans: list[tuple[int, int, int]], tokens: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Run frame spans `(sound, first, end)` of `features` through the encoder, each as the clip it is alone.

        Spans of one length are batched, `batch_size` at a time; none is padded, except a span shorter
        than one patch, which gets the extractor's padding rows up to one patch, as alone it would.
        Returns `pooler_output` `(spans, C)` and, with `tokens=True`, each span's final patch tokens `(f, t, C)`.
        """
        config = self.encoder.config
        f, _ = config.patch_grid  # frequency rows do not depend on the length
        extractor = self.feature_extractor
        pad_value = float(extractor.normalize(torch.zeros(()))) if extractor.do_normalize else 0.0  # zeros, normalised
        pooled = features.new_empty(len(spans), config.hidden_size)
        patches: list[torch.Tensor | None] | None = [None] * len(spans) if tokens else None
        by_length: dict[int, list[int]] = {}
        for index, (_, first, end) in enumerate(spans):
            by_length.setdefault(end - first, []).append(index)
        for length, indices in by_length.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                inputs = torch.stack([features[spans[i][0], spans[i][1] : spans[i][2]] for i in batch])  # (B, T, bins)
                if length < config.patch_size:
                    inputs = nn.functional.pad(inputs, (0, 0, 0, config.patch_size - length), value=pad_value)
                output = self.encoder(inputs.to(self.encoder.dtype))
                pooled[batch] = output.pooler_output.float()
                if tokens:
                    grid = output.last_hidden_state.float()[:, NUM_PREFIX_TOKENS:]  # (B, f*t, C), frequency-major
                    grid = grid.reshape(len(batch), f, grid.shape[1] // f, -1)  # (B, f, t, C)
                    for row, index in enumerate(batch):
                        patches[index] = grid[row]
        return pooled, patches

    def passes(self, num_frames: int) -> list[tuple[int, int]]:
        """Frame ranges `[first, end)` the encoder runs on for whole-clip outputs: the clip when it fits the input.

        Longer clips: windows of the model's input that start every `t * time_stride` frames (`t`
        the patch columns of one input), so the patch columns of consecutive windows continue one
        regular spacing; the last window ends with the clip.
        """
        config = self.encoder.config
        if num_frames <= config.max_length:
            return [(0, num_frames)]
        _, columns = config.patch_grid
        hop = columns * config.time_stride
        bounds = [(0, config.max_length)]
        while bounds[-1][1] < num_frames:
            first = bounds[-1][0] + hop
            bounds.append((first, min(first + config.max_length, num_frames)))
        return bounds


# ---------------------------------------------------------------------------------------------
# HEAR API
# ---------------------------------------------------------------------------------------------


def load_model(
    model_file_path: str = "",
    *,
    scene_pooling: str = "cls",
    timestamp_method: str = "windows",
    hop_ms: float = DEFAULT_HOP_MS,
    window_s: float = DEFAULT_WINDOW_S,
    sample_rate: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    **from_pretrained_kwargs,
) -> HearAstModel:
    """Load an AST checkpoint as a HEAR model (module docstring: embeddings, methods, the default).

    Args:
        model_file_path: a Hub id (`MIT/ast-finetuned-audioset-10-10-0.4593`), a directory saved by
            hf-ast or transformers (classifier or encoder, with its `preprocessor_config.json`), or a
            file inside such a directory (`config.json`, `model.safetensors`). Empty: the offline
            default, see `default_model_dirs`.
        scene_pooling: "cls" (pooled cls and distillation) or "patches" (mean of patch tokens).
        timestamp_method: "windows" (a `window_s` window centred at each timestamp) or "patches".
        hop_ms: milliseconds between timestamp embeddings.
        window_s: window length of `timestamp_method="windows"`, at most the model's input.
        sample_rate: rate of the audio you will pass, one of `HEAR_SAMPLE_RATES`; None: the model's.
        batch_size: windows per forward pass.
        from_pretrained_kwargs: for `from_pretrained` (revision, dtype, attn_implementation, ...).
    """
    source = resolve_model_path(model_file_path)
    revision = {"revision": from_pretrained_kwargs["revision"]} if "revision" in from_pretrained_kwargs else {}
    config = HfAstConfig.from_pretrained(source, **revision)
    # A classifier checkpoint loads as the classifier and gives up its encoder, so transformers
    # reports no unused head weights; an encoder-only checkpoint loads as one.
    if any(name.endswith("ForAudioClassification") for name in (config.architectures or [])):
        classifier = HfAstForAudioClassification.from_pretrained(source, **from_pretrained_kwargs)
        encoder = classifier.audio_spectrogram_transformer
    else:
        encoder = HfAstModel.from_pretrained(source, **from_pretrained_kwargs)
    try:
        extractor = HfAstFeatureExtractor.from_pretrained(source)
    except OSError:
        raise OSError(
            f"{source} has no preprocessor_config.json, so the feature extractor (rate, max_length, normalisation) "
            "is unknown; save one beside the model: HfAstFeatureExtractor(max_length=...).save_pretrained(dir)."
        ) from None
    return HearAstModel(
        encoder, extractor, sample_rate=sample_rate, scene_pooling=scene_pooling, timestamp_method=timestamp_method,
        hop_ms=hop_ms, window_s=window_s, batch_size=batch_size,
    )


def resolve_model_path(model_file_path: str) -> str:
    """`model_file_path` as `from_pretrained` takes it; the offline default when empty."""
    if not model_file_path:
        for candidate in default_model_dirs():
            if (candidate / "config.json").is_file():
                return str(candidate)
        raise FileNotFoundError(
            "load_model() got no model_file_path and found no default model (searched: "
            + ", ".join(str(path) for path in default_model_dirs())
            + "). Nothing is downloaded and random weights would give meaningless embeddings. Pass a checkpoint, "
            "e.g. load_model('MIT/ast-finetuned-audioset-10-10-0.4593') or a local directory, set "
            f"{MODEL_ENV}=DIR, or train the offline demo's model: python examples/demo.py (it writes "
            f"{DEMO_MODEL})."
        )
    path = Path(model_file_path).expanduser()
    if path.is_file():
        return str(path.parent)  # HEAR passes a file path; transformers loads the directory holding it
    if not path.exists() and (model_file_path.startswith(("/", ".", "~")) or model_file_path.count("/") > 1):
        raise FileNotFoundError(f"model_file_path={model_file_path!r}: no such file or directory.")
    return str(path) if path.exists() else model_file_path


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearAstModel) -> torch.Tensor:
    """`(n_sounds, n_samples)` audio -> `(n_sounds, scene_embedding_size)` float32 embeddings.

    One pass for clips up to the model's input; longer clips are cut into passes of the model's
    input (`HearAstModel.passes`), averaged with weights proportional to their frame counts.
    """
    features, _ = model.features(audio)
    n = features.shape[0]
    bounds = model.passes(features.shape[1])
    spans = [(sound, first, end) for first, end in bounds for sound in range(n)]  # pass-major
    pooled, patches = model.encode(features, spans, tokens=model.scene_pooling == "patches")
    if model.scene_pooling == "cls":
        per_pass = pooled.reshape(len(bounds), n, -1)  # (passes, n, C)
    else:
        per_pass = torch.stack([grid.mean(dim=(0, 1)) for grid in patches]).reshape(len(bounds), n, -1)
    weights = torch.tensor([end - first for first, end in bounds], dtype=torch.float32, device=features.device)
    return torch.einsum("p,pnc->nc", weights / weights.sum(), per_pass)  # (n, C)


def timestamps_ms(duration_ms: float, hop_ms: float) -> torch.Tensor:
    """`k * hop_ms` for `k = 0 .. floor(duration_ms / hop_ms)`: from 0 to less than one hop before the end."""
    count = int(math.floor(duration_ms / hop_ms + 1e-9)) + 1
    return torch.arange(count, dtype=torch.float64) * hop_ms  # exact multiples: no drift over long audio


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearAstModel) -> tuple[torch.Tensor, torch.Tensor]:
    """`(n_sounds, n_samples)` audio -> embeddings `(n_sounds, T, C)` and timestamps in ms `(n_sounds, T)`.

    Timestamps are `k * model.hop_ms`; each embedding is centred at its timestamp (module docstring).
    """
    features, duration_ms = model.features(audio)
    times = timestamps_ms(duration_ms, model.hop_ms)  # (T,) float64
    if model.timestamp_method == "windows":
        embeddings = _window_embeddings(features, times, model)
    else:
        embeddings = _patch_embeddings(features, times, model)
    timestamps = times.to(torch.float32)[None].expand(features.shape[0], -1).to(features.device)
    return embeddings, timestamps.contiguous()


def _frame_ms(frames, model: HearAstModel):
    """Centre in ms of (fractional) frame index `frames`: frame i spans [i * hop, i * hop + 25 ms)."""
    rate = model.feature_extractor.sampling_rate
    return (frames * model.frame_hop + model.frame / 2) * 1000 / rate


def _window_embeddings(features: torch.Tensor, times: torch.Tensor, model: HearAstModel) -> torch.Tensor:
    """`(n, T, C)`: the pooled output of `window_frames` frames centred at each timestamp, cut at the clip's edges.

    The window's first frame is rounded to whole frames, so its centre is within half a frame hop
    (5 ms) of the timestamp; exactly on it, up to Kaldi's 2.5 ms offset, for hops that are whole 10 ms.
    """
    n, num_frames = features.shape[:2]
    rate = model.feature_extractor.sampling_rate
    centre_frames = (times * rate / 1000 - model.frame / 2) / model.frame_hop  # (T,) fractional frame at each time
    firsts = torch.round(centre_frames - (model.window_frames - 1) / 2).long().tolist()
    bounds = [(min(max(0, first), num_frames - 1), min(num_frames, max(1, first + model.window_frames)))
              for first in firsts]
    spans = [(sound, first, end) for sound in range(n) for first, end in bounds]  # sound-major
    pooled, _ = model.encode(features, spans)
    return pooled.reshape(n, len(bounds), -1)  # (n, T, C)


def _patch_embeddings(features: torch.Tensor, times: torch.Tensor, model: HearAstModel) -> torch.Tensor:
    """`(n, T, C)`: patch columns averaged over frequency, interpolated from the columns' centres."""
    config = model.encoder.config
    n = features.shape[0]
    bounds = model.passes(features.shape[1])
    spans = [(sound, first, end) for first, end in bounds for sound in range(n)]  # pass-major
    _, patches = model.encode(features, spans, tokens=True)
    columns, centres = [], []
    for index, (first, _) in enumerate(bounds):
        grids = patches[index * n : (index + 1) * n]  # this pass of every sound, (f, t, C) each
        columns.append(torch.stack([grid.mean(dim=0) for grid in grids]))  # (n, t, C)
        # Column j spans frames [j * stride, j * stride + patch) of the pass.
        j = torch.arange(grids[0].shape[1], dtype=torch.float64)
        centres.append(_frame_ms(first + j * config.time_stride + (config.patch_size - 1) / 2, model))
    columns = torch.cat(columns, dim=1)  # (n, columns, C)
    centres_ms = torch.cat(centres)  # (columns,), increasing, one spacing
    clamped = times.clamp(centres_ms[0], centres_ms[-1])
    right = torch.searchsorted(centres_ms, clamped, right=True).clamp(max=len(centres_ms) - 1)
    left = (right - 1).clamp(min=0)
    span = (centres_ms[right] - centres_ms[left]).clamp(min=1e-9)
    weight = ((clamped - centres_ms[left]) / span).clamp(0, 1).to(columns)[None, :, None]  # (1, T, 1)
    left, right = left.to(columns.device), right.to(columns.device)
    return columns[:, left] * (1 - weight) + columns[:, right] * weight  # (n, T, C)


__all__ = [
    "HEAR_SAMPLE_RATES",
    "HearAstModel",
    "default_model_dirs",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
]
