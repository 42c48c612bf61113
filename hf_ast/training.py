"""Pieces of the training loop that the example script and the tests share.

- `AudioCollator`: decodes clips itself (so one corrupt file is skipped, not fatal), applies
  mixup on the waveform, extracts the whole batch's features at once, SpecAugment before
  normalisation and the Speech Commands noise after it, as the reference does.
- `atomic_save_state` / `load_checkpoint` / `latest_checkpoint`: Accelerate checkpoints written
  to a temporary folder and renamed into place (older ones are deleted only once the new one is
  complete), with the script's own state (history, scheduler) as JSON and safetensors beside
  them, so that resuming unpickles nothing that could run code.
- `plot_history`, `write_model_card`: what a finished run leaves next to its model.
"""

import io
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from .augment import add_noise_and_roll, mixup_waveforms, spec_augment
from .feature_extraction_hf_ast import HfAstFeatureExtractor, resample
from .labels import RowTargets  # noqa: F401  (documented type of `targets`)

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TMP_PREFIX = ".tmp-"
CHECKPOINT_INFO = "hf_ast_checkpoint.json"
TENSOR_KEY = "__safetensors__"  # marks a JSON object that stands for a tensor or array in the .safetensors file


def decode_audio(value, sampling_rate: int) -> np.ndarray:
    """A datasets `Audio(decode=False)` value ({"bytes", "path"}) or a decoded one -> mono float32 at `sampling_rate`."""
    if isinstance(value, dict) and "array" in value:
        array, rate = np.asarray(value["array"], dtype=np.float32), value["sampling_rate"]
        if rate != sampling_rate:  # the extractor's resampler (FFmpeg's, as for encoded files below)
            array = resample(torch.from_numpy(array), rate, sampling_rate).numpy()
    else:
        source = value.get("bytes") or value.get("path") if isinstance(value, dict) else value
        array = _read_with_soundfile(source, sampling_rate)
        if array is None:  # mp3, ogg, video containers, other rates: FFmpeg through torchcodec
            from torchcodec.decoders import AudioDecoder

            array = AudioDecoder(source, sample_rate=sampling_rate).get_all_samples().data.numpy()
    if array.ndim == 2:
        array = array.mean(axis=0)  # (channels, samples) -> mono
    return array.astype(np.float32, copy=False)


def _read_with_soundfile(source, sampling_rate: int) -> np.ndarray | None:
    """WAV/FLAC already at `sampling_rate` through libsndfile: about 25x faster than FFmpeg per short clip.

    Returns (channels, samples) float32, or None when libsndfile cannot read it or the rate differs.
    """
    import soundfile

    try:
        handle = soundfile.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (RuntimeError, TypeError, soundfile.LibsndfileError):
        return None
    with handle:
        if handle.samplerate != sampling_rate:
            return None
        return handle.read(dtype="float32", always_2d=True).T


class AudioCollator:
    """List of dataset rows -> `input_values (B, T, F)`, `labels (B, C)`, `attention_mask (B, T)`.

    Rows carry the audio column (undecoded) and `_index`, the row's position in `targets`
    (a float `(N, C)` multi-hot or one-hot tensor), or `targets` is a `RowTargets` that computes
    them from the rows' label values (streamed data, where the whole split is not known up
    front). Rows marked `_padding` (see `hf_ast.streaming`) only keep batch sizes equal across
    processes: they are neither clips nor bad clips. Undecodable, empty, too short or non-finite
    clips are dropped with a warning and counted in `num_bad`; a batch left with no clip becomes
    one silent dummy clip with `valid=False`, so every process still runs a forward and backward
    pass (the loss is multiplied by 0) and DDP stays in step.

    `keep_bad_rows=True` (evaluation) keeps one row per input instead: a bad clip becomes a silent
    row with `valid=False` and an all-zero attention mask. Every process then contributes batches
    of the expected size to `gather_for_metrics`, which would otherwise stall or mis-trim them;
    drop the rows where `valid` is False after gathering. `bad` (B,) marks the rows that were bad
    clips (not padding), so they can be counted after gathering too: `num_bad` would count the
    clips that Accelerate repeats to even out the last batch twice.
    """

    def __init__(
        self,
        extractor: HfAstFeatureExtractor,
        audio_column: str,
        targets: "torch.Tensor | RowTargets | None",
        train: bool,
        mixup: float = 0.0,
        freq_mask: int = 0,
        time_mask: int = 0,
        noise: bool = False,
        normalize: bool = True,
        seed: int = 0,
        keep_bad_rows: bool = False,
        padding: str = "max_length",
        mask_value: str = "reference",
    ):
        self.extractor = extractor
        self.audio_column = audio_column
        self.targets = targets
        self.train = train
        self.mixup, self.freq_mask, self.time_mask, self.noise = mixup, freq_mask, time_mask, noise
        self.normalize = normalize
        self.keep_bad_rows = keep_bad_rows
        self.padding = padding  # "max_length" (the reference) or "longest" (padding-free training)
        if mask_value not in ("reference", "mean"):
            raise ValueError(f"mask_value={mask_value!r}; use 'reference' (raw log-mel 0, as the reference) or 'mean'")
        self.mask_value = mask_value
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def _generator(self, indices) -> torch.Generator:
        # Augmentation randomness is a function of (seed, epoch, the batch's rows), not of the global
        # RNG: the same batch gets the same mixup and masks with any number of workers and after
        # a resume, where skipping batches and re-creating iterators would shift a shared RNG.
        key = np.array([self.seed, self.epoch, *[-1 if i is None else i for i in indices]], dtype=np.int64)
        return torch.Generator().manual_seed(int(np.random.SeedSequence(key.tolist()).generate_state(1)[0]))

    def _decode(self, row):
        try:
            clip = decode_audio(row[self.audio_column], self.extractor.sampling_rate)
        except Exception as error:  # a corrupt file must not end a long run
            return None, f"could not be decoded ({type(error).__name__}: {error})"
        if clip.size < self.extractor.window_size:
            return None, f"has {clip.size} samples, fewer than one 25 ms frame"
        if not np.isfinite(clip).all():
            return None, "contains NaN or infinite samples"
        return clip, None

    def __call__(self, rows: list[dict]) -> dict:
        clips, indices, valid, bad, kept = [], [], [], [], []
        num_bad = 0
        for row in rows:
            padding = bool(row.get("_padding"))  # not a clip: neither decoded nor counted as bad
            clip, problem = (None, "is padding") if padding else self._decode(row)
            if problem:
                if not padding:
                    num_bad += 1
                    where = row[self.audio_column].get("path") if isinstance(row[self.audio_column], dict) else None
                    logger.warning(f"skipping clip {row.get('_index')} ({where}): it {problem}")
                if not self.keep_bad_rows:
                    continue
                clip = np.zeros(self.extractor.window_size, dtype=np.float32)  # silent placeholder row
            clips.append(clip)
            indices.append(row.get("_index"))
            valid.append(problem is None)
            bad.append(problem is not None and not padding)
            kept.append(row)
        num_clips = sum(not row.get("_padding") for row in rows)
        if self.targets is None:
            num_labels = 1
        elif callable(self.targets):
            num_labels = self.targets.num_labels
        else:
            num_labels = self.targets.shape[1]
        if not clips:
            return {
                "input_values": torch.zeros(1, self.extractor.max_length, self.extractor.num_mel_bins),
                "attention_mask": torch.ones(1, self.extractor.max_length, dtype=torch.long),
                "labels": torch.zeros(1, num_labels),
                "valid": torch.zeros(1, dtype=torch.bool),
                "bad": torch.zeros(1, dtype=torch.bool),  # a placeholder, not a clip
                "num_bad": num_bad,
                "num_clips": num_clips,
            }
        if self.targets is None:
            labels = torch.zeros(len(clips), num_labels)
        elif callable(self.targets):
            labels = self.targets(kept).float()
        else:
            labels = self.targets[indices].float()
        generator = self._generator(indices) if self.train else None

        if self.train and self.mixup > 0:
            lengths = torch.tensor([len(c) for c in clips])
            waveforms = torch.zeros(len(clips), int(lengths.max()))
            for i, clip in enumerate(clips):
                waveforms[i, : len(clip)] = torch.from_numpy(clip)
            waveforms, labels, lengths = mixup_waveforms(
                waveforms, labels, rate=self.mixup, generator=generator, lengths=lengths
            )
            clips = [waveforms[i, : int(lengths[i])] for i in range(len(clips))]

        features = self.extractor(
            clips, sampling_rate=self.extractor.sampling_rate, return_tensors="pt", return_attention_mask=True,
            do_normalize=False, padding=self.padding,
        )
        input_values, attention_mask = features["input_values"], features["attention_mask"]  # (B, T, F), (B, T)
        valid = torch.tensor(valid, dtype=torch.bool)  # (B,)
        attention_mask = attention_mask * valid[:, None]  # placeholder rows have no frames
        normalize = self.normalize and self.extractor.do_normalize
        masking = self.train and (self.freq_mask or self.time_mask)
        if masking and self.mask_value == "reference":  # raw log-mel 0, before normalisation
            input_values = spec_augment(input_values, self.freq_mask, self.time_mask, generator=generator,
                                        lengths=attention_mask.sum(-1))
        if normalize:
            input_values = self.extractor.normalize(input_values)
        if masking and self.mask_value == "mean":  # the normalised mean (0), as SpecAugment masks
            input_values = spec_augment(input_values, self.freq_mask, self.time_mask, generator=generator,
                                        lengths=attention_mask.sum(-1), mask_value=0.0 if normalize else self.extractor.mean)
        if self.train and self.noise:
            input_values = add_noise_and_roll(input_values, generator=generator)
        return {
            "input_values": input_values,
            "attention_mask": attention_mask,
            "labels": labels,
            "valid": valid,
            "bad": torch.tensor(bad, dtype=torch.bool),
            "num_bad": num_bad,
            "num_clips": num_clips,
        }


# -- checkpoints ---------------------------------------------------------------------------------


def _complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    root = Path(output_dir) / CHECKPOINT_DIR
    found = []
    if root.is_dir():
        for path in root.iterdir():
            info = path / CHECKPOINT_INFO
            if path.is_dir() and not path.name.startswith(TMP_PREFIX) and info.exists():
                found.append((json.loads(info.read_text())["step"], path))
    return sorted(found)


def latest_checkpoint(output_dir) -> Path | None:
    """The most advanced complete checkpoint under `output_dir/checkpoints`, or None."""
    found = _complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def atomic_save_state(accelerator, output_dir, name: str, step: int, total_limit: int | None = None,
                      states: dict | None = None) -> Path:
    """`accelerator.save_state` into a temporary folder, renamed into place when complete.

    A run killed during the save leaves only a `.tmp-*` folder, which resumption ignores, so it
    resumes from the previous complete checkpoint. Old checkpoints beyond `total_limit` (0 or
    None: keep all) are deleted only after the new one is in place (Accelerate's own rotation
    deletes first), and never the new one. `states` maps a file name to an object with
    `state_dict()` (the same on every process; the main process writes it with
    `save_safe_state`): use it instead of `accelerator.register_for_checkpointing`, whose pickle
    files `load_state` unpickles in full.
    """
    if total_limit is not None and total_limit < 0:
        raise ValueError(f"total_limit {total_limit}: pass the number of checkpoints to keep (0 or None keeps all)")
    root = Path(output_dir) / CHECKPOINT_DIR
    final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for file_name, obj in (states or {}).items():
            save_safe_state(obj.state_dict(), tmp, file_name)
        # Written last: a folder with this file is complete.
        (tmp / CHECKPOINT_INFO).write_text(json.dumps({"step": step, "name": name, "states": sorted(states or {})}))
        if final.exists():  # same name again (e.g. a resumed run re-saving): replace only after writing
            trash = root / f"{TMP_PREFIX}old-{name}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        if total_limit:
            for _, old in _complete_checkpoints(output_dir)[:-total_limit]:
                if old != final:  # a run resumed from an earlier checkpoint writes a lower step than the rest
                    shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path, states: dict | None = None) -> None:
    """Resume from `path`: `accelerator.load_state` with `weights_only` loading, then `states` (see
    `atomic_save_state`) from their JSON and safetensors files.

    Nothing here unpickles arbitrary objects, so a crafted checkpoint folder cannot run code: a
    folder holding Accelerate's `custom_checkpoint_*.pkl` (which `load_state` would unpickle in
    full) is refused, and a file that `weights_only` loading rejects stops the resume. (Accelerate
    skips, and logs, a random-state file it cannot load.)
    """
    path = Path(path)
    pickled = sorted(p.name for p in path.glob("custom_checkpoint_*.pkl"))
    if pickled:
        raise ValueError(
            f"{path} holds {', '.join(pickled)}: state that Accelerate unpickles in full, which runs any code a "
            "crafted file carries, so it is not loaded. Checkpoints written by this version keep that state as "
            "JSON and safetensors; resume from one of those, or start the run again."
        )
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: a file in this checkpoint holds more than tensors and plain values, and loading it would "
            f"mean unpickling objects that can run code; refusing it ({error})"
        ) from error
    for file_name, obj in (states or {}).items():
        obj.load_state_dict(load_safe_state(path, file_name))


def save_safe_state(state, directory, name: str) -> None:
    """`state` (dicts with str keys, lists, JSON values, tensors, numpy arrays) as `name.json` + `name.safetensors`.

    Loading these runs no code, unlike a pickle. Tuples come back as lists; anything else (a
    function, an object) raises TypeError rather than being pickled.
    """
    tensors = {}

    def encode(value, where):
        if isinstance(value, (torch.Tensor, np.ndarray)):
            key = str(len(tensors))
            tensors[key] = torch.as_tensor(value).detach().cpu().contiguous().clone()  # clone: no shared storage
            return {TENSOR_KEY: key, "numpy": isinstance(value, np.ndarray)}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value) or TENSOR_KEY in value:
                raise TypeError(f"{name}{where}: only str keys (other than {TENSOR_KEY!r}) can be stored")
            return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{name}{where}: a {type(value).__name__} cannot be stored as JSON or safetensors")

    from safetensors.torch import save_file

    encoded = encode(state, "")
    (Path(directory) / f"{name}.json").write_text(json.dumps(encoded))
    if tensors:
        save_file(tensors, str(Path(directory) / f"{name}.safetensors"))


def load_safe_state(directory, name: str):
    """What `save_safe_state` wrote; numpy arrays come back as numpy arrays, tensors as CPU tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensor_file = Path(directory) / f"{name}.safetensors"
    try:
        tensors = load_file(str(tensor_file)) if tensor_file.exists() else {}
    except SafetensorError as error:
        raise ValueError(f"{tensor_file}: not a safetensors file ({error})") from error

    def decode(value):
        if isinstance(value, dict):
            if TENSOR_KEY in value:
                tensor = tensors[value[TENSOR_KEY]]
                return tensor.numpy() if value.get("numpy") else tensor
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(json.loads((Path(directory) / f"{name}.json").read_text()))


# -- outputs -------------------------------------------------------------------------------------


def plot_history(records: list[dict], path, metric: str | None = None) -> Path:
    """Training loss and the eval metric per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or ("mAP" if "mAP" in records[0] else "accuracy")
    epochs = [r["epoch"] for r in records]
    figure, loss_axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    loss_axis.plot(epochs, [r["train_loss"] for r in records], "o-", color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    metric_axis = loss_axis.twinx()
    metric_axis.plot(epochs, [r[metric] for r in records], "s-", color="tab:orange", label=f"eval {metric}")
    metric_axis.set_ylabel(f"eval {metric}", color="tab:orange")
    metric_axis.set_ylim(0, 1)
    loss_axis.set_title("hf-ast training")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def write_model_card(path, config, args: dict, records: list[dict], results: dict | None) -> Path:
    """A README.md model card for the run, in the layout of the package's MODEL_CARD.md template."""
    metric = "mAP" if config.problem_type == "multi_label_classification" else "accuracy"
    last = records[-1] if records else {}
    f, t = config.patch_grid
    rows = "\n".join(
        f"| {r['epoch']} | {r['train_loss']:.4f} | {r.get(metric, float('nan')):.4f} |" for r in records
    )
    averaged = (results or {}).get("weight_averaged")
    averaged_line = f"\nWeight-averaged model ({averaged['epochs']} epochs): {metric} {averaged[metric]:.4f}.\n" if averaged else ""
    dataset = args.get("dataset_name")
    card = f"""---
library_name: transformers
pipeline_tag: audio-classification
tags:
  - audio-classification
  - audio-spectrogram-transformer
  - hf-ast
---

# {Path(args.get('output_dir', 'model')).name}

An Audio Spectrogram Transformer (Gong, Chung & Glass, Interspeech 2021) trained with hf-ast on
`{dataset}` ({config.num_labels} labels, {config.problem_type}).

## Use

```python
from transformers import pipeline

classifier = pipeline("audio-classification", model="{args.get('hub_model_id') or args.get('output_dir')}", trust_remote_code=True)
```

## Architecture

| | |
|---|---|
| input | 128-bin Kaldi log-mel filterbank, {config.max_length} frames, normalised with the saved extractor's mean/std (x - mean) / (2 std) |
| patches | 16 x 16, stride {config.frequency_stride} x {config.time_stride}: {f} x {t} = {f * t} patches + cls + distillation |
| encoder | {config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} heads, MLP {config.intermediate_size} |
| head | LayerNorm + Linear on the mean of cls and distillation, {config.num_labels} labels |

## Training

Initialisation: `{args.get('model_name_or_path')}` (channel reduction {args.get('channel_reduction')}).
Recipe `{args.get('recipe')}`: lr {args.get('learning_rate')}, batch {args.get('per_device_train_batch_size')} per device,
{args.get('num_train_epochs')} epochs, warm-up {args.get('warmup_steps')} steps, decay x{args.get('lr_decay_gamma')} every
{args.get('lr_decay_every')} epoch(s) from epoch {args.get('lr_decay_start_epoch')}, mixup {args.get('mixup')},
SpecAugment {args.get('freq_mask')}/{args.get('time_mask')}, balanced sampling {args.get('balanced_sampling')}.

## Evaluation

| epoch | train loss | eval {metric} |
|---|---|---|
{rows}
{averaged_line}
Final eval {metric}: {last.get(metric, float('nan')):.4f}.

## Limitations

Scores are not calibrated probabilities; labels and their balance come from the training data.
See the hf-ast MODEL_CARD.md template for the full list of sections to complete before publishing.

## Citation

Gong, Chung & Glass, "AST: Audio Spectrogram Transformer", Interspeech 2021, doi:10.21437/Interspeech.2021-698.
"""
    Path(path).write_text(card)
    return Path(path)


__all__ = [
    "AudioCollator",
    "atomic_save_state",
    "decode_audio",
    "latest_checkpoint",
    "load_checkpoint",
    "load_safe_state",
    "plot_history",
    "save_safe_state",
    "write_model_card",
]
