"""Batched Kaldi log-mel filterbank features for AST.

The numbers are those of `torchaudio.compliance.kaldi.fbank(..., window_type="hanning",
num_mel_bins=128)` that the AST paper and transformers' `ASTFeatureExtractor` use, computed for a
whole batch in one tensor program on any torch device. Defaults reproduce transformers' extractor
(pad or cut to `max_length` frames, AudioSet normalisation), so published checkpoints behave as
published.

This file is copied next to every saved model for `trust_remote_code=True`; it imports nothing
from the `hf_ast` package.
"""

import functools
import math
import numbers
import struct

import numpy as np
import torch
from torch.nn import functional as nn_functional
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

logger = logging.get_logger(__name__)

# AudioSet log-mel statistics of the reference implementation (YuanGongND/ast, src/run.py); its
# ESC-50 ones are -6.6268077, 5.358466, its Speech Commands ones -6.845978, 5.5654526.
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974
# Kaldi framing: 25 ms windows every 10 ms, FFT size = next power of two of the window.
WINDOW_MS, HOP_MS = 25, 10
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
# Kaldi's log floor: float32 machine epsilon.
LOG_FLOOR = float(torch.finfo(torch.float32).eps)
# Smallest padded length: one 16-frame patch (`padding="longest"` never returns less).
MIN_FRAMES = 16
# Frames featurised per pass on the CPU (see `fbank`).
FRAMES_PER_BLOCK = 2048
# Integer dtypes read as PCM (`_as_mono` scales them to [-1, 1]); other integers are refused.
PCM_DTYPES = ("int16", "int32", "uint8")


# ---------------------------------------------------------------------------------------------
# Kaldi framing and filterbank (module-level: the extractor below only checks and batches)
# ---------------------------------------------------------------------------------------------


def frame_geometry(sampling_rate: int) -> tuple[int, int]:
    """`(window_size, hop_length)` in samples of Kaldi's 25 ms / 10 ms framing: (400, 160) at 16 kHz."""
    return int(sampling_rate * WINDOW_MS / 1000), int(sampling_rate * HOP_MS / 1000)


def fft_size_of(window_size: int) -> int:
    """Kaldi's FFT size: the next power of two of the window (512 for 400 samples)."""
    return 1 << (window_size - 1).bit_length()


def num_frames(num_samples, window_size: int, hop_length: int):
    """Kaldi's frame count with `snip_edges=True` (only whole windows), of an int or an integer tensor."""
    frames = 1 + (num_samples - window_size) // hop_length
    return frames.clamp_min(0) if isinstance(frames, torch.Tensor) else max(frames, 0)


def num_samples_for(frames: int, window_size: int, hop_length: int) -> int:
    """The fewest samples that give `frames` Kaldi frames (up to `hop_length - 1` more give no more frames)."""
    return window_size + (frames - 1) * hop_length


def _kaldi_mel(freq):
    return 1127.0 * torch.log1p(freq / 700.0)


@functools.lru_cache(maxsize=16)
def kaldi_mel_banks(num_mel_bins: int, sampling_rate: int, fft_size: int, device: str) -> torch.Tensor:
    """Kaldi's triangular mel filters, `(fft_size // 2 + 1, num_mel_bins)` float32, triangles in mel space.

    Kaldi (and torchaudio's `get_mel_banks`) spaces `num_mel_bins + 2` edges evenly on the mel
    scale `1127 ln(1 + f / 700)` from 20 Hz to Nyquist and leaves the Nyquist FFT bin at zero.
    """
    fft_bins = fft_size // 2
    nyquist = sampling_rate / 2
    mel_low, mel_high = _kaldi_mel(torch.tensor(LOW_FREQ, dtype=torch.float64)), _kaldi_mel(
        torch.tensor(nyquist, dtype=torch.float64)
    )
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    edges = mel_low + delta * torch.arange(num_mel_bins + 2, dtype=torch.float64)  # (bins + 2,)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (bins, 1) each
    mel = _kaldi_mel(sampling_rate / fft_size * torch.arange(fft_bins, dtype=torch.float64))[None, :]  # (1, fft_bins)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (bins, fft_bins)
    banks = torch.nn.functional.pad(banks, (0, 1))  # Nyquist bin weight 0
    return banks.T.contiguous().to(device=device, dtype=torch.float32)  # (fft_bins + 1, bins)


@functools.lru_cache(maxsize=16)
def _hann(window_size: int, device: str) -> torch.Tensor:
    # Kaldi's "hanning" is the symmetric Hann window.
    return torch.hann_window(window_size, periodic=False, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=16)
def _padded_hann(window_size: int, fft_size: int, device: str) -> torch.Tensor:
    return nn_functional.pad(_hann(window_size, device), (0, fft_size - window_size))  # (fft_size,)


@functools.lru_cache(maxsize=16)
def _mel_bank_groups(num_mel_bins: int, sampling_rate: int, fft_size: int, device: str, group: int = 16):
    """`kaldi_mel_banks` cut into groups of `group` filters, each with the FFT-bin range it covers.

    Returns `(low, high, banks[low:high, filters])` per group; the groups' products, concatenated,
    equal `power @ kaldi_mel_banks(...)` (rows outside a group's range are zero for its filters).
    """
    banks = kaldi_mel_banks(num_mel_bins, sampling_rate, fft_size, device)  # (fft_bins + 1, bins)
    groups = []
    for start in range(0, num_mel_bins, group):
        columns = banks[:, start : start + group]
        rows = (columns > 0).any(dim=1).nonzero()[:, 0]
        low, high = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 1)
        groups.append((low, high, columns[low:high].contiguous()))
    return tuple(groups)


def log_mel(frames: torch.Tensor, frame_means: torch.Tensor, sampling_rate: int, num_mel_bins: int) -> torch.Tensor:
    """`(b, m, fft_size)` pre-emphasised frames and their waveform means -> `(b, m, num_mel_bins)` Kaldi log-mel."""
    device = str(frames.device)
    window_size, _ = frame_geometry(sampling_rate)
    fft_size = frames.shape[-1]
    window = _padded_hann(window_size, fft_size, device)  # (fft_size,), zeros past the window
    # One pass windows the frames, one removes the DC: (frame - 0.03 * mean) * window.
    windowed = frames * window
    windowed.addcmul_(frame_means[..., None], window, value=-(1 - PREEMPHASIS))
    spectrum = torch.view_as_real(torch.fft.rfft(windowed)).square_()  # (b, m, fft_size // 2 + 1, 2)
    power = spectrum[..., 0] + spectrum[..., 1]  # |X|^2 without complex abs (slow on the CPU)
    # Mel filters are triangles a few FFT bins wide: multiply each group of 16 filters by the
    # FFT bins it covers only (about 4x fewer FLOPs than the dense (bins, 128) matrix).
    groups = _mel_bank_groups(num_mel_bins, sampling_rate, fft_size, device)
    mel = torch.cat([power[..., low:high] @ banks for low, high, banks in groups], dim=-1)
    return mel.clamp_min_(LOG_FLOOR).log_()


def fbank(
    waveforms: torch.Tensor,
    num_samples: torch.Tensor,
    sampling_rate: int,
    num_mel_bins: int,
    num_rows: int | None = None,
    statistics: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi log-mel filterbanks of a zero-padded `(B, N)` batch -> `(B, rows, num_mel_bins)` and frame counts `(B,)`.

    Frames of a clip never reach past its own samples (snip_edges), so a clip's frames are those it
    has alone; rows past a clip's frame count are 0 (before normalisation), as transformers pads
    them. `rows` is the frame count of the longest clip, or `num_rows` (more rows are padding, fewer
    cut). `statistics=(mean, std)` normalises on the way: `(fbank - mean) / (2 * std)`.
    """
    window_size, hop_length = frame_geometry(sampling_rate)
    fft_size = fft_size_of(window_size)
    batch_size, length = waveforms.shape
    total_frames = num_frames(length, window_size, hop_length)
    # Kaldi per frame: remove the DC, pre-emphasise x[n] - 0.97 x[n-1] with x[-1] := x[0], window.
    # All three are linear, so the batch is pre-emphasised once as a waveform (not per frame):
    #   preemph(frame - mean) = preemph(frame) - 0.03 * mean   (0.03 = 1 - 0.97, at every n)
    # and the DC term becomes -0.03 * mean * window, added in the windowing pass. A frame's first
    # sample differs between the two pre-emphases, but the symmetric Hann window zeroes it.
    # Removing each clip's mean first changes nothing (every frame loses its own DC) but keeps
    # the DC correction small, so float32 does not cancel large numbers in low bins.
    padded = bool((num_samples < length).any())
    if padded:
        inside = torch.arange(length, device=waveforms.device)[None, :] < num_samples[:, None]  # (B, N)
        waveforms = waveforms * inside
    clip_means = waveforms.sum(dim=1, keepdim=True) / num_samples.clamp_min(1)[:, None]  # (B, 1)
    waveforms = waveforms - clip_means
    if padded:
        waveforms = waveforms * inside
    # Frame means of the waveform, each a plain 400-sample average (exact enough in float32).
    means = waveforms.unfold(1, window_size, hop_length).mean(dim=-1)  # (B, M)
    emphasised = torch.empty(batch_size, length + fft_size - window_size, device=waveforms.device)
    emphasised[:, length:] = 0  # frames are read fft_size long; the zero-padded window ignores the tail
    emphasised[:, :1] = waveforms[:, :1]
    torch.add(waveforms[:, 1:], waveforms[:, :-1], alpha=-PREEMPHASIS, out=emphasised[:, 1:length])
    # (B, M, fft_size) overlapping views of the emphasised waveform; no copy for rfft's padding.
    frames = emphasised.unfold(1, fft_size, hop_length)[:, :total_frames]
    rows = total_frames if num_rows is None else num_rows
    features = torch.empty(batch_size, rows, num_mel_bins, device=waveforms.device)
    normalize = statistics is not None
    mean, std = statistics if normalize else (0.0, 1.0)
    pad_value = (0.0 - mean) / (std * 2) if normalize else 0.0
    features[:, total_frames:] = pad_value
    total_frames = min(total_frames, rows)
    # On the CPU, blocks of ~2048 frames keep every intermediate (~4 MB) in cache and in the
    # allocator's reuse range: whole-batch intermediates (33 MB for 16 ten-second clips) are
    # fresh mmaps whose page faults cost as much as the FFT. Other devices take the batch at once.
    block = FRAMES_PER_BLOCK if waveforms.device.type == "cpu" else max(1, batch_size * total_frames)
    clips_per_block = max(1, block // max(total_frames, 1))
    for start in range(0, batch_size, clips_per_block):
        clips = slice(start, start + clips_per_block)
        for first in range(0, total_frames, block):
            columns = slice(first, min(first + block, total_frames))
            values = log_mel(frames[clips, columns], means[clips, columns], sampling_rate, num_mel_bins)
            features[clips, columns] = values.sub_(mean).div_(std * 2) if normalize else values
    frame_counts = num_frames(num_samples, window_size, hop_length)  # (B,)
    if padded:
        padding = torch.arange(rows, device=waveforms.device)[None, :] >= frame_counts[:, None]  # (B, rows)
        features.masked_fill_(padding[..., None], pad_value)
    return features, frame_counts


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------



@functools.lru_cache(maxsize=1)
def _ffmpeg_available() -> bool:
    """Whether torchcodec can decode (it needs FFmpeg's shared libraries)."""
    try:
        _ffmpeg_resample(torch.zeros(800), 8000, 16000)
    except Exception:  # ImportError, or torchcodec without FFmpeg libraries (RuntimeError, OSError)
        return False
    return True


def _float_wav(samples: np.ndarray, sampling_rate: int) -> bytes:
    """A mono 32-bit float WAV file (format 3, IEEE float) holding `samples` exactly."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sampling_rate, sampling_rate * 4, 4, 32)  # float, mono, byte rate, align, bits
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " + struct.pack(
        "<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data


def _ffmpeg_resample(clip: torch.Tensor, source_rate: int, target_rate: int) -> torch.Tensor:
    """`(samples,)` at `source_rate` -> `target_rate` with FFmpeg's swresample (torchcodec), on the clip's device."""
    from torchcodec.decoders import AudioDecoder

    wav = _float_wav(clip.detach().float().cpu().numpy(), source_rate)
    resampled = AudioDecoder(wav, sample_rate=target_rate).get_all_samples().data[0]  # (samples,) float32
    return resampled.to(clip.device)


def resample(clip: torch.Tensor, source_rate: int, target_rate: int, resampler: str = "ffmpeg") -> torch.Tensor:
    """`(samples,)` from `source_rate` to `target_rate`: FFmpeg's resampler where installed, else torchaudio's."""
    if resampler == "ffmpeg" and _ffmpeg_available():
        return _ffmpeg_resample(clip, source_rate, target_rate)
    try:
        import torchaudio.functional as audio_functional
    except ImportError:
        raise ImportError(
            f"audio at {source_rate} Hz must be resampled to {target_rate} Hz, which needs torchcodec with FFmpeg "
            "(pip install torchcodec; apt-get install ffmpeg) or torchaudio, or resample it yourself."
        ) from None
    if resampler == "ffmpeg":
        logger.warning_once(
            "torchcodec/FFmpeg is not available: resampling with torchaudio, whose output differs from the FFmpeg "
            "decoding that datasets and pipeline() use (features differ above the source's Nyquist frequency)"
        )
    return audio_functional.resample(clip, source_rate, target_rate)


# ---------------------------------------------------------------------------------------------
# Argument checks and the extractor
# ---------------------------------------------------------------------------------------------


def _whole_number(value) -> int | None:
    """`value` as an int when it is a whole number (int, numpy integer, or integral float), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return int(value) if math.isfinite(value) and value.is_integer() else None


def _positive_int(value, name: str, unit: str, example: int, fix: str) -> int:
    number = _whole_number(value)
    if number is None or number <= 0:
        raise ValueError(f"{name}={value!r}: pass a positive whole number of {unit}, e.g. {name}={example}{fix}.")
    return number


class HfAstFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Kaldi log-mel filterbank features for the Audio Spectrogram Transformer, batched and device-aware.

    Args:
        feature_size (`int`, defaults to 1): channels of the raw input (mono).
        sampling_rate (`int`, defaults to 16000): rate the model expects; other rates are resampled.
        num_mel_bins (`int`, defaults to 128): mel bins.
        max_length (`int`, defaults to 1024): frames to pad or cut to (10.24 s).
        padding_value (`float`, defaults to 0.0): raw-audio padding value (transformers' API).
        do_normalize (`bool`, defaults to `True`): apply `(fbank - mean) / (2 * std)`.
        mean (`float`, defaults to `AUDIOSET_MEAN`), std (`float`, defaults to `AUDIOSET_STD`): the
            AudioSet statistics of the reference implementation, -4.2677393 and 4.5689974. The
            `2 * std` divisor is the reference's choice, which puts features roughly in [-1, 1].
        return_attention_mask (`bool`, defaults to `False`): also return the frame-level mask.
        padding (`str`, defaults to `"max_length"`): the call's default padding; the training script
            saves `"longest"` (with `return_attention_mask=True`) for a model trained padding-free, so
            `pipeline()` serves it as it was trained.
        resampler (`str`, defaults to `"ffmpeg"`): how other rates are resampled: `"ffmpeg"` (through
            torchcodec, as datasets and `pipeline()` decode files; torchaudio where it is missing) or
            `"torchaudio"` (sinc interpolation, also on a GPU).
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        max_length: int = 1024,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        return_attention_mask: bool = False,
        resampler: str = "ffmpeg",
        padding: str = "max_length",
        **kwargs,
    ):
        # Checked here, so a broken preprocessor_config.json fails at load time, not as inf features later.
        saved = "; fix it in the constructor call or the saved preprocessor_config.json"
        sampling_rate = _positive_int(sampling_rate, "sampling_rate", "Hz", 16000, saved)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.num_mel_bins = num_mel_bins
        self.max_length = _positive_int(max_length, "max_length", "frames", 1024, saved)
        self.do_normalize = do_normalize
        self.mean = mean
        self.std = std
        self.return_attention_mask = return_attention_mask
        if resampler not in ("ffmpeg", "torchaudio"):
            raise ValueError(
                f"resampler={resampler!r}; use 'ffmpeg' (as datasets and pipeline() decode) or 'torchaudio'"
            )
        self.resampler = resampler
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding={padding!r}; use 'max_length' or 'longest'" + saved)
        self.padding = padding
        if do_normalize:
            self._check_statistics(saved)

    # -- geometry ---------------------------------------------------------------------------

    @property
    def window_size(self) -> int:
        return frame_geometry(self.sampling_rate)[0]  # 400 samples at 16 kHz

    @property
    def hop_length(self) -> int:
        return frame_geometry(self.sampling_rate)[1]  # 160 samples at 16 kHz

    @property
    def fft_size(self) -> int:
        return fft_size_of(self.window_size)  # 512 at 16 kHz

    def num_frames(self, num_samples: int) -> int:
        """Kaldi frame count with `snip_edges=True`: only whole 25 ms windows."""
        return num_frames(num_samples, self.window_size, self.hop_length)

    def min_samples(self, sampling_rate: int) -> int:
        """Fewest samples at `sampling_rate` that surely give one 25 ms frame at `self.sampling_rate`.

        `ceil(window_size * source / target)`: torchaudio resamples `n` samples to
        `ceil(n * target / source)` and FFmpeg to about `n * target / source` (it may give one
        sample more or fewer), so this many always reach `window_size`; one fewer may not.
        """
        if sampling_rate == self.sampling_rate:
            return self.window_size
        return -(-self.window_size * sampling_rate // self.sampling_rate)

    @property
    def max_amplitude(self) -> float:
        """Largest |sample| whose filterbank fits in float32.

        A frame's DC removal and pre-emphasis at most quadruple a sample; its FFT bins are at most
        `fft_size` times that, and a mel filter sums at most all `fft_size // 2 + 1` powers:
        `(4 * fft_size * peak) ** 2 * (fft_size // 2 + 1)` must stay below float32's maximum.
        About 5.6e14 at 16 kHz: unscaled 16- or 32-bit PCM is far inside it.
        """
        return math.sqrt(float(torch.finfo(torch.float32).max) / (self.fft_size // 2 + 1)) / (4 * self.fft_size)

    # -- input checking ---------------------------------------------------------------------

    def _check_statistics(self, fix: str) -> None:
        """The normalisation `(fbank - mean) / (2 * std)` needs a finite mean and a positive, finite std."""
        if not (isinstance(self.mean, numbers.Real) and math.isfinite(self.mean)):
            raise ValueError(
                f"mean={self.mean!r}: the normalisation (fbank - mean) / (2 * std) needs a finite mean (AudioSet: "
                f"{AUDIOSET_MEAN}){fix}, or use do_normalize=False for raw log-mel."
            )
        if not (isinstance(self.std, numbers.Real) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(
                f"std={self.std!r}: the normalisation (fbank - mean) / (2 * std) needs a positive, finite std "
                f"(AudioSet: {AUDIOSET_STD}){fix}, or use do_normalize=False for raw log-mel."
            )

    def _as_clips(self, raw_speech, sampling_rate: int) -> tuple[list[torch.Tensor], list[str]]:
        """Any accepted input -> 1-D float32 CPU/GPU tensors, one mono clip each, and the clips' names."""
        if isinstance(raw_speech, (np.ndarray, torch.Tensor)):
            if raw_speech.ndim == 1:
                items, names = [raw_speech], ["audio"]
            elif raw_speech.ndim == 2:
                clips, samples = raw_speech.shape
                if clips == 0:
                    raise ValueError(
                        f"audio array has shape {tuple(raw_speech.shape)}: a batch with no clips; pass at least one."
                    )
                # Checked before the rows are split (and resampled): a (samples, channels) recording
                # read as thousands of 2-sample clips must fail at once, not after resampling each.
                if samples < self.min_samples(sampling_rate):
                    hint = (
                        f" If it is one recording of {samples} channels stored (samples, channels), pass array.T, "
                        "shaped (channels, samples)." if clips > samples else ""
                    )
                    raise ValueError(
                        f"audio array has shape {tuple(raw_speech.shape)}, which reads as a batch of {clips} mono "
                        f"clips of {samples} samples each, shorter than one 25 ms frame "
                        f"({self.min_samples(sampling_rate)} samples at {sampling_rate} Hz).{hint}"
                    )
                items, names = list(raw_speech), [f"audio clip {i}" for i in range(clips)]
            else:
                raise ValueError(
                    f"audio array has shape {tuple(raw_speech.shape)}; pass one mono clip (samples,), a batch of "
                    "mono clips (batch, samples), or a list whose items are (samples,) or (channels, samples)."
                )
        elif isinstance(raw_speech, (list, tuple)):
            if len(raw_speech) == 0:
                raise ValueError("got an empty list of audio clips; pass at least one clip.")
            if all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in raw_speech):
                items, names = [self._list_as_array(raw_speech, "audio")], ["audio"]
            else:
                items, names = list(raw_speech), [f"audio clip {i}" for i in range(len(raw_speech))]
        else:
            raise ValueError(
                f"audio of type {type(raw_speech).__name__} is not supported; pass numpy arrays, torch tensors "
                "or lists of floats."
            )
        return [self._as_mono(item, name) for item, name in zip(items, names)], names

    @staticmethod
    def _list_as_array(values, name: str) -> np.ndarray:
        """A list of numbers, read as numpy reads it: numpy int16/int32/uint8 scalars stay PCM.

        Python ints are float samples, so only within [-1, 1] (`[0] * n` is silence): larger ones
        are PCM of a width the list cannot tell, and are refused rather than read as floats of
        enormous amplitude.
        """
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} could not be read as numbers ({error}); pass float samples.") from None
        if array.dtype.kind in "iu" and array.dtype.name not in PCM_DTYPES:
            peak = int(np.abs(array).max()) if array.size else 0
            if peak > 1:
                raise ValueError(
                    f"{name} is a list of integers as large as {peak}: PCM samples of unknown width, which would "
                    "be read as floats far outside [-1, 1]. Pass np.asarray(samples, dtype=np.int16) for 16-bit PCM "
                    "(or dtype=np.int32 for 32-bit), or float samples in [-1, 1]."
                )
            array = array.astype(np.float32)
        return array

    def _as_mono(self, clip, name: str) -> torch.Tensor:
        if isinstance(clip, (list, tuple)):
            clip = self._list_as_array(clip, name)
        if isinstance(clip, np.ndarray):
            if clip.dtype.kind not in "fiu":
                raise ValueError(
                    f"{name} has dtype {clip.dtype}, which is not numeric audio; pass float samples in [-1, 1] "
                    "or int16 PCM."
                )
            clip = torch.from_numpy(np.array(clip, copy=not clip.flags.writeable or None, order="C"))
        if not isinstance(clip, torch.Tensor):
            raise ValueError(f"{name} is a {type(clip).__name__}; pass a numpy array, torch tensor or list of floats.")
        if clip.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{name} requires grad, but the filterbank is not differentiable (its framing writes into "
                "preallocated buffers, and the features carry no graph); pass audio.detach(), or call the "
                "extractor under torch.no_grad()."
            )
        if clip.dtype in (torch.bool, torch.complex64, torch.complex128) or clip.dtype.is_complex:
            raise ValueError(f"{name} has dtype {clip.dtype}, which is not real-valued audio; pass float samples.")
        if clip.dtype == torch.int16:
            clip = clip.float() / 32768.0  # 16-bit PCM
        elif clip.dtype == torch.int32:
            clip = clip.float() / 2147483648.0  # 32-bit PCM
        elif clip.dtype == torch.uint8:
            clip = (clip.float() - 128.0) / 128.0  # 8-bit unsigned PCM
        elif not clip.is_floating_point():
            raise ValueError(f"{name} has integer dtype {clip.dtype}; pass float samples or int16/int32 PCM.")
        clip = clip.to(torch.float32)
        if clip.ndim == 2:
            channels, samples = clip.shape
            if channels > samples:
                raise ValueError(
                    f"{name} has shape {tuple(clip.shape)}, which reads as {channels} channels of {samples} samples; "
                    "pass (channels, samples), e.g. array.T for a (samples, channels) array."
                )
            clip = clip.mean(dim=0)  # down-mix to mono
        elif clip.ndim != 1:
            raise ValueError(
                f"{name} has shape {tuple(clip.shape)}; pass mono (samples,) or multi-channel (channels, samples) "
                "arrays."
            )
        if clip.numel() == 0:
            raise ValueError(f"{name} is empty; every clip needs at least one 25 ms frame of samples.")
        # One pass for both checks (NaN propagates to the min and the max); a sum would overflow on
        # large finite samples and call them infinite.
        low, high = torch.stack(torch.aminmax(clip)).tolist()
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{name} contains NaN or infinite samples; clean or drop the clip before extraction.")
        peak = max(-low, high)
        if peak > self.max_amplitude:
            raise ValueError(
                f"{name} has samples as large as {peak:.3g}, beyond what float32 filterbanks can hold "
                f"(|sample| <= {self.max_amplitude:.2g}); float audio is expected in [-1, 1]: scale the clip, e.g. "
                "by 1/32768 for 16-bit PCM values stored as floats."
            )
        return clip

    def _resample(self, clips: list[torch.Tensor], sampling_rate: int) -> list[torch.Tensor]:
        """Each clip at `sampling_rate` -> `self.sampling_rate`, with FFmpeg's resampler where it is installed.

        One resampler for training and serving: datasets' `Audio(sampling_rate=...)` and the
        training collator decode through torchcodec (FFmpeg's swresample), and `pipeline()` decodes
        file paths with the `ffmpeg` binary (the same). Resamplers differ most where upsampled audio
        has no content: the band above the source's Nyquist frequency holds only the resampler's
        residue, whose log-mel values (-10 to -16) differ by up to 1.5 after normalisation between
        FFmpeg and torchaudio. An array at its native rate therefore goes through FFmpeg too (as a
        float WAV in memory, so no sample is rounded), and gives the features its file gives.
        Without torchcodec/FFmpeg, torchaudio's sinc resampler is used, with a warning.
        """
        return [resample(clip, sampling_rate, self.sampling_rate, self.resampler) for clip in clips]

    # -- features ---------------------------------------------------------------------------

    def fbank(
        self, waveforms: torch.Tensor, num_samples: torch.Tensor, num_rows: int | None = None, normalize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`fbank` with this extractor's rate and mel bins; `normalize=True` applies its `normalize` on the way."""
        statistics = (self.mean, self.std) if normalize else None
        return fbank(waveforms, num_samples, self.sampling_rate, self.num_mel_bins, num_rows, statistics)

    def normalize(self, input_values):
        # Reference normalisation (YuanGongND/ast dataloader): (x - mean) / (2 * std).
        self._check_statistics("; set the extractor's field")
        return (input_values - self.mean) / (self.std * 2)

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        padding: bool | str | None = None,
        max_length: int | None = None,
        truncation: bool = True,
        return_attention_mask: bool | None = None,
        device: str | torch.device | None = None,
        do_normalize: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Featurise one clip or a batch.

        Args:
            raw_speech: a 1-D array/tensor/list of floats (one mono clip), a 2-D array/tensor (a batch
                of mono clips), or a list of clips of any lengths, each (samples,) or (channels,
                samples) (averaged to mono). int16/int32/uint8 PCM is scaled to [-1, 1]; a list of
                Python ints is float samples, refused beyond [-1, 1] (its PCM width is unknown). A
                tensor that requires grad is refused outside `torch.no_grad()`: the features carry
                no gradient.
            sampling_rate: rate of `raw_speech` in Hz (a positive whole number); other than
                `self.sampling_rate` it is resampled with torchaudio, after the clip lengths are
                checked. Missing: a warning, and the extractor's rate is assumed.
            return_tensors: "pt", "np", or None (a list of numpy arrays, one per clip).
            padding: "max_length" (as transformers: every clip padded or cut to `max_length`
                frames), "longest"/True (pad to the batch's longest clip, at least 16 frames), or
                False/"do_not_pad" (clips must give equal frame counts). Default: `self.padding`,
                "max_length" unless the model was trained padding-free.
            max_length: frames to pad/cut to, overriding `self.max_length` for this call.
            truncation: cut clips longer than `max_length` frames (default). With False and
                `padding="longest"`, long clips are kept whole (the model then needs
                `interpolate_pos_encoding=True`).
            return_attention_mask: also return the frame-level mask (1 = real frame).
            device: torch device to compute on (and to return tensors on, with "pt").
            do_normalize: override `self.do_normalize` for this call; training asks for raw
                log-mel to apply SpecAugment before `normalize`, as the reference does.
        """
        if sampling_rate is None:
            logger.warning(
                f"No sampling_rate was passed to {type(self).__name__}; assuming {self.sampling_rate} Hz. "
                "Pass sampling_rate= to avoid silently wrong features."
            )
            sampling_rate = self.sampling_rate
        sampling_rate = _positive_int(sampling_rate, "sampling_rate", "Hz", 16000, " (the audio's rate)")
        max_length = _positive_int(self.max_length if max_length is None else max_length, "max_length", "frames",
                                   1024, "")
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        if do_normalize:
            self._check_statistics("; set the extractor's field")
        padding = _padding_strategy(self.padding if padding is None else padding)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r}; use 'pt', 'np' or None.")
        return_attention_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask

        clips = self._mono_clips(raw_speech, sampling_rate)  # checked, mono, at self.sampling_rate
        device = torch.device(device) if device is not None else clips[0].device
        # Cut first, so truncated audio is never featurised.
        longest = max(clip.numel() for clip in clips)
        keep = min(longest, num_samples_for(max_length, self.window_size, self.hop_length)) if truncation else longest
        waveforms, num_samples = _zero_padded_batch(clips, keep, device)  # (B, N), (B,)
        frame_counts = num_frames(num_samples, self.window_size, self.hop_length)  # (B,)
        target = _target_frames(padding, frame_counts, max_length, truncation, return_tensors)
        # (B, target, bins): padded (or cut) to `target` frames and normalised inside fbank, block by block.
        features, frame_counts = self.fbank(waveforms, num_samples, num_rows=target, normalize=do_normalize)
        return _batch_feature(features, frame_counts.clamp(max=target), padding, return_tensors, return_attention_mask)

    def _mono_clips(self, raw_speech, sampling_rate: int) -> list[torch.Tensor]:
        """Any accepted input -> checked 1-D float32 clips at `self.sampling_rate`: the one place input is coerced."""
        clips, names = self._as_clips(raw_speech, sampling_rate)
        # Lengths are checked at the input's rate, before anything is resampled.
        min_samples = self.min_samples(sampling_rate)
        for name, clip in zip(names, clips):
            if clip.numel() < min_samples:
                resampled = (
                    "" if sampling_rate == self.sampling_rate
                    else f" once resampled to {self.sampling_rate} Hz ({self.window_size} samples there)"
                )
                raise ValueError(
                    f"{name} has {clip.numel()} samples at {sampling_rate} Hz, shorter than one 25 ms "
                    f"frame{resampled}; "
                    f"pad it with silence to at least {min_samples} samples at {sampling_rate} Hz or drop it."
                )
        if sampling_rate != self.sampling_rate:
            clips = self._resample(clips, sampling_rate)
        return clips


def _padding_strategy(padding) -> str:
    """`padding` as one of "max_length", "longest" (True) or "do_not_pad" (False)."""
    if padding is True:
        padding = "longest"
    elif padding is False:
        padding = "do_not_pad"
    if padding not in ("max_length", "longest", "do_not_pad"):
        raise ValueError(f"padding={padding!r}; use 'max_length', 'longest' (or True) or 'do_not_pad' (or False).")
    return padding


def _zero_padded_batch(clips: list[torch.Tensor], keep: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips cut to `keep` samples -> `(B, keep)` on `device` (zeros after each clip's end), sample counts `(B,)`."""
    num_samples = torch.tensor([clip.numel() for clip in clips], device=device).clamp(max=keep)
    if all(clip.numel() >= keep for clip in clips):
        return torch.stack([clip[:keep] for clip in clips]).to(device), num_samples
    waveforms = torch.zeros(len(clips), keep, device=device)
    for index, clip in enumerate(clips):
        waveforms[index, : min(clip.numel(), keep)] = clip[:keep]
    return waveforms, num_samples


def _target_frames(padding: str, frame_counts: torch.Tensor, max_length: int, truncation: bool, return_tensors) -> int:
    """Frames every clip of the batch is padded (or cut) to."""
    longest = int(frame_counts.max())
    if padding == "max_length":
        return max_length
    if padding == "longest":
        target = max(longest, MIN_FRAMES)
        return min(target, max_length) if truncation else target
    if int(frame_counts.min()) != longest and return_tensors is not None:
        raise ValueError(
            f"padding='do_not_pad' with clips of {frame_counts.tolist()} frames cannot form one tensor; "
            "use padding='longest' (with return_attention_mask=True) or return_tensors=None."
        )
    return longest


def _batch_feature(features: torch.Tensor, frame_counts: torch.Tensor, padding: str, return_tensors,
                   return_attention_mask: bool) -> BatchFeature:
    """`(B, T, bins)` features and frame counts -> the call's output: tensors, arrays, or one array per clip."""
    num_clips, target = features.shape[:2]
    attention_mask = (torch.arange(target, device=features.device)[None, :] < frame_counts[:, None]).long()  # (B, T)
    if return_tensors != "pt":
        features, attention_mask = features.cpu().numpy(), attention_mask.cpu().numpy()
    if return_tensors is None:  # a list: unpadded clips keep only their own frames
        counts = frame_counts.tolist() if padding == "do_not_pad" else [target] * num_clips
        features = [features[i, : counts[i]] for i in range(num_clips)]
        attention_mask = [attention_mask[i, : counts[i]] for i in range(num_clips)]
    data = {"input_values": features}
    if return_attention_mask:
        data["attention_mask"] = attention_mask
    return BatchFeature(data)

__all__ = [
    "AUDIOSET_MEAN",
    "AUDIOSET_STD",
    "HfAstFeatureExtractor",
    "fbank",
    "frame_geometry",
    "kaldi_mel_banks",
    "log_mel",
    "num_frames",
    "num_samples_for",
]
