"""Batches for training and evaluation: decoding, mixup, features and SpecAugment in one collator.

`AudioCollator` decodes clips itself (so one corrupt file is skipped, not fatal), applies mixup on
the waveform, extracts the whole batch's features at once, SpecAugment before normalisation and
the Speech Commands noise after it, as the reference does.
"""

import io
import logging

import numpy as np
import torch

from ..feature_extraction_hf_ast import HfAstFeatureExtractor, resample
from ..labels import RowTargets  # noqa: F401  (documented type of `targets`)
from .augment import add_noise_and_roll, mixup_waveforms, spec_augment
from .streaming import INDEX_KEY, PADDING_KEY

logger = logging.getLogger(__name__)


def decode_audio(value, sampling_rate: int) -> np.ndarray:
    """A datasets `Audio(decode=False)` value ({"bytes", "path"}) or a decoded one -> mono float32 at that rate."""
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
    front). Rows marked `_padding` (see `hf_ast.training.streaming`) only keep batch sizes equal across
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
            padding = bool(row.get(PADDING_KEY))  # not a clip: neither decoded nor counted as bad
            clip, problem = (None, "is padding") if padding else self._decode(row)
            if problem:
                if not padding:
                    num_bad += 1
                    where = row[self.audio_column].get("path") if isinstance(row[self.audio_column], dict) else None
                    logger.warning(f"skipping clip {row.get(INDEX_KEY)} ({where}): it {problem}")
                if not self.keep_bad_rows:
                    continue
                clip = np.zeros(self.extractor.window_size, dtype=np.float32)  # silent placeholder row
            clips.append(clip)
            indices.append(row.get(INDEX_KEY))
            valid.append(problem is None)
            bad.append(problem is not None and not padding)
            kept.append(row)
        num_clips = sum(not row.get(PADDING_KEY) for row in rows)
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
                                        lengths=attention_mask.sum(-1),
                                        mask_value=0.0 if normalize else self.extractor.mean)
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


__all__ = ["AudioCollator", "decode_audio"]
