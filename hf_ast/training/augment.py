"""Training-only augmentations of the reference AST recipes (YuanGongND/ast, `src/dataloader.py`).

The reference applies these per clip inside its dataset; here they work on whole batches, with
an optional `torch.Generator` so that a seeded run (and a test) is reproducible:

- `mixup_waveforms`: mixup on raw audio with lambda ~ Beta(10, 10) (AudioSet, Speech Commands).
- `spec_augment`: one frequency mask and one time mask per clip, drawn as torchaudio's
  `FrequencyMasking` / `TimeMasking` draw them (every recipe).
- `add_noise_and_roll`: uniform noise and a random time shift (Speech Commands only).

Shapes: waveforms `(B, N)` samples, zero-padded at the end; spectrograms `(B, T, F)` frames by
mel bins, the model's input layout. Random numbers are drawn on the generator's device (CPU when
none is given) and moved to the data's device, so a CPU generator drives GPU batches too.
"""

import torch


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    """`torch.rand` from `generator` (global RNG when None), moved to `device`."""
    return torch.rand(shape, generator=generator, device=_device_of(generator), dtype=dtype).to(device)


def _beta(alpha: float, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """`(size,)` draws from Beta(alpha, alpha).

    torch's Beta sampler takes no generator; with one, a seed is drawn from it and the sampler runs
    under a forked global RNG, which keeps the draw reproducible without touching global state.
    """
    distribution = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    if generator is None:
        return distribution.sample((size,))
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return distribution.sample((size,))


def mixup_waveforms(
    waveforms: torch.Tensor,
    targets: torch.Tensor,
    rate: float,
    alpha: float = 10.0,
    generator: torch.Generator | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix a fraction `rate` of the clips with a random partner from the batch, on the raw waveform.

    For each selected clip i: `lam ~ Beta(alpha, alpha)` (10, 10 in the reference: mixes close to
    half and half), a partner p != i drawn uniformly from the rest of the batch, then
    `x_i = lam * x_i + (1 - lam) * x_p` and `y_i = lam * y_i + (1 - lam) * y_p`: the targets get the
    waveform's weights, so soft labels say how much of each clip is heard. Other clips are unchanged.

    Lengths: the mix spans the longer of the two clips, `max(len_i, len_p)`, and the shorter one is
    silent (its zero padding) beyond its end. Both sounds are then heard in full, which is what
    the mixed labels claim. The reference instead cuts or zero-pads the partner to the first clip's
    length, which can cut away the partner's labelled event; for AudioSet's 10 s clips the two
    agree. The reference also subtracts the mean of the mixed waveform; Kaldi fbank removes each
    frame's DC anyway, so it is not repeated here.

    Args:
        waveforms: `(B, N)` float, zero-padded at the end.
        targets: `(B, C)` float multi-hot or one-hot targets (class ids must be one-hot encoded first).
        rate: probability that a clip is mixed (the recipe's `mixup`: 0.5 AudioSet, 0.6 Speech Commands).
        alpha: Beta parameter.
        generator: optional `torch.Generator` for reproducible draws.
        lengths: `(B,)` valid samples per clip; all `N` when omitted.

    Returns:
        `(waveforms, targets, lengths)`, new tensors (the inputs themselves when nothing is mixed:
        `rate == 0` or a batch of one, where no partner exists).
    """
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms has shape {tuple(waveforms.shape)}; pass a padded (batch, samples) tensor.")
    batch_size, num_samples = waveforms.shape
    if targets.dim() != 2 or targets.shape[0] != batch_size or not targets.is_floating_point():
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} and dtype {targets.dtype}; mixup needs float "
            f"(batch={batch_size}, num_labels) multi-hot or one-hot targets (one-hot encode class ids first)."
        )
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate} must be a probability in [0, 1].")
    if lengths is None:
        lengths = torch.full((batch_size,), num_samples, dtype=torch.long, device=waveforms.device)
    elif lengths.shape != (batch_size,) or (lengths > num_samples).any() or (lengths < 0).any():
        raise ValueError(
            f"lengths must be (batch={batch_size},) sample counts in [0, {num_samples}]; got {lengths.tolist()}."
        )
    if rate == 0.0 or batch_size < 2:
        return waveforms, targets, lengths

    device = waveforms.device
    lengths = lengths.to(device)
    selected = _rand((batch_size,), generator, device) < rate  # (B,)
    # A partner other than the clip itself: an offset in [1, B) around the batch.
    offsets = torch.randint(1, batch_size, (batch_size,), generator=generator, device=_device_of(generator))
    partner = (torch.arange(batch_size, device=device) + offsets.to(device)) % batch_size  # (B,)
    lam = _beta(alpha, batch_size, generator).to(device)
    lam = torch.where(selected, lam, torch.ones_like(lam))  # (B,), 1 = unchanged

    # Beyond a clip's length its padding is zero, so a plain mix over all N samples is the mix over
    # max(len_i, len_p) with the shorter clip silent at the end.
    weight = lam[:, None].to(waveforms.dtype)
    mixed_waveforms = weight * waveforms + (1 - lam[:, None]).to(waveforms.dtype) * waveforms[partner]
    mixed_targets = lam[:, None].to(targets.dtype) * targets + (1 - lam[:, None]).to(targets.dtype) * targets[partner]
    mixed_lengths = torch.where(selected, torch.maximum(lengths, lengths[partner]), lengths)
    return mixed_waveforms, mixed_targets, mixed_lengths


def _axis_masks(
    batch_size: int, size: torch.Tensor, mask_param: int, generator: torch.Generator | None, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end `(B,)` of one mask per clip, drawn as torchaudio's `mask_along_axis_iid`.

    width = floor(u1 * mask_param), start = floor(u2 * (size - u1 * mask_param)) with u ~ U(0, 1):
    widths are uniform over {0, ..., mask_param - 1} and the mask lies inside `[0, size)`.
    `size` is `(B,)`: the axis length, or each clip's valid frames.
    """
    value = _rand((batch_size,), generator, device) * mask_param
    value = torch.minimum(value, size.to(value.dtype))  # a mask never longer than the clip
    start = (_rand((batch_size,), generator, device) * (size - value)).long()
    return start, start + value.long()


def spec_augment(
    fbank: torch.Tensor,
    freq_mask: int,
    time_mask: int,
    generator: torch.Generator | None = None,
    lengths: torch.Tensor | None = None,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """One frequency mask and one time mask per clip on log-mel `(B, T, F)`: SpecAugment as in the reference.

    The reference runs torchaudio's `FrequencyMasking(freq_mask)` then `TimeMasking(time_mask)` on
    each clip; this draws the same random numbers in the same order (so with a generator seeded
    like torch's global RNG the masks are identical to torchaudio's with `iid_masks=True`) and
    adds what torchaudio lacks: a generator, and `lengths` to keep time masks inside each clip's
    valid frames (the reference pads first and may mask padding). Widths are uniform in
    `[0, param)`; a width larger than the clip is cut to the clip.

    Masking value: the reference masks the log-mel *before* normalisation with 0.0 (torchaudio's
    default), which after `(x - mean) / (2 * std)` becomes `-mean / (2 * std)` (+0.467 for AudioSet),
    the same value as the padded frames. On features that are already normalised, pass
    `mask_value=-mean / (2 * std)` for exactly the reference's result (masking and the affine
    normalisation commute).

    Args:
        fbank: `(B, T, F)` log-mel filterbanks (the model's input layout).
        freq_mask: maximum frequency-mask width in mel bins (48 AudioSet, 24 ESC-50); 0 = none.
        time_mask: maximum time-mask width in frames (192 AudioSet, 96 ESC-50, 48 Speech Commands); 0 = none.
        generator: optional `torch.Generator`.
        lengths: `(B,)` valid frames per clip; all `T` when omitted.
        mask_value: value written into the masks.

    Returns:
        A new `(B, T, F)` tensor.
    """
    if fbank.dim() != 3:
        raise ValueError(f"fbank has shape {tuple(fbank.shape)}; pass (batch, frames, mel_bins) log-mel filterbanks.")
    if freq_mask < 0 or time_mask < 0:
        raise ValueError(f"freq_mask={freq_mask} and time_mask={time_mask} must be >= 0.")
    batch_size, num_frames, num_bins = fbank.shape
    device = fbank.device
    if lengths is None:
        lengths = torch.full((batch_size,), num_frames, device=device)
    elif lengths.shape != (batch_size,) or (lengths > num_frames).any():
        raise ValueError(
            f"lengths must be (batch={batch_size},) frame counts <= {num_frames}; got {lengths.tolist()}."
        )
    masked = torch.zeros(fbank.shape, dtype=torch.bool, device=device)
    if freq_mask > 0:
        bins = torch.full((batch_size,), num_bins, device=device)
        start, end = _axis_masks(batch_size, bins, freq_mask, generator, device)
        bins = torch.arange(num_bins, device=device)
        masked |= ((bins >= start[:, None]) & (bins < end[:, None]))[:, None, :]  # (B, 1, F)
    if time_mask > 0:
        start, end = _axis_masks(batch_size, lengths.to(device), time_mask, generator, device)
        frames = torch.arange(num_frames, device=device)
        masked |= ((frames >= start[:, None]) & (frames < end[:, None]))[:, :, None]  # (B, T, 1)
    return fbank.masked_fill(masked, mask_value)


def add_noise_and_roll(
    fbank: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 10
) -> torch.Tensor:
    """The reference's Speech Commands augmentation on normalised log-mel `(B, T, F)`.

    Per clip: add `U(0, 1) noise * s` with one scale `s ~ U(0, 1) / 10` per clip (so the noise lies
    in `[0, 0.1)`), then roll circularly along time by an integer in `[-max_shift, max_shift]`
    (positive = later). The reference draws the shift with `np.random.randint(-10, 10)`, which never
    gives +10; this range is symmetric. Padded frames are noised and rolled too, as in the reference.

    Returns:
        A new `(B, T, F)` tensor.
    """
    if fbank.dim() != 3:
        raise ValueError(f"fbank has shape {tuple(fbank.shape)}; pass (batch, frames, mel_bins) log-mel filterbanks.")
    batch_size, num_frames, _ = fbank.shape
    device = fbank.device
    scale = _rand((batch_size,), generator, device, fbank.dtype) / 10  # (B,)
    noise = _rand(fbank.shape, generator, device, fbank.dtype) * scale[:, None, None]
    shifts = torch.randint(-max_shift, max_shift + 1, (batch_size,), generator=generator, device=_device_of(generator))
    # out[b, t] = in[b, t - shift_b] (torch.roll's direction), one shift per clip.
    source = (torch.arange(num_frames, device=device)[None, :] - shifts.to(device)[:, None]) % num_frames  # (B, T)
    noisy = fbank + noise
    return torch.gather(noisy, 1, source[:, :, None].expand_as(noisy))


__all__ = ["add_noise_and_roll", "mixup_waveforms", "spec_augment"]
