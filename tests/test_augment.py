"""Training augmentations: mixup, SpecAugment masks, Speech Commands noise and roll."""

import pytest
import torch
import torchaudio

from hf_ast.training.augment import add_noise_and_roll, mixup_waveforms, spec_augment


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# mixup
# ---------------------------------------------------------------------------------------------


def constant_batch(batch_size: int, num_samples: int = 8):
    """Clip i is the constant i + 1 with one-hot target i, so a mix can be read off both."""
    levels = torch.arange(1, batch_size + 1, dtype=torch.float64)
    waveforms = levels[:, None].expand(batch_size, num_samples).clone()
    targets = torch.eye(batch_size, dtype=torch.float64)
    return levels, waveforms, targets


def test_mixup_rate_zero_is_identity():
    _, waveforms, targets = constant_batch(6)
    lengths = torch.tensor([8, 7, 6, 5, 4, 3])
    mixed, mixed_targets, mixed_lengths = mixup_waveforms(
        waveforms, targets, rate=0.0, generator=seeded(), lengths=lengths
    )
    assert torch.equal(mixed, waveforms) and torch.equal(mixed_targets, targets)
    assert torch.equal(mixed_lengths, lengths)


def test_mixup_targets_carry_the_waveform_weights():
    levels, waveforms, targets = constant_batch(512)
    mixed, mixed_targets, _ = mixup_waveforms(waveforms, targets, rate=1.0, generator=seeded(1))

    # Every clip is mixed with exactly one other clip (never itself): two non-zero weights summing to 1.
    assert ((mixed_targets > 0).sum(dim=1) == 2).all()
    torch.testing.assert_close(mixed_targets.sum(dim=1), torch.ones(512, dtype=torch.float64))
    # The waveform is the same weighted sum of the clips as the targets.
    torch.testing.assert_close(mixed, (mixed_targets @ levels)[:, None].expand_as(mixed))
    # lam is the clip's own weight: Beta(10, 10) has mean 0.5 and std sqrt(1 / 84) = 0.109.
    lam = mixed_targets.diagonal()
    assert 0.0 < lam.min() and lam.max() < 1.0
    assert lam.mean().item() == pytest.approx(0.5, abs=0.02)
    assert lam.std().item() == pytest.approx((1 / 84) ** 0.5, abs=0.015)


def test_mixup_rate_selects_that_fraction_and_leaves_the_rest():
    _, waveforms, targets = constant_batch(2000, num_samples=2)
    mixed, mixed_targets, _ = mixup_waveforms(waveforms, targets, rate=0.3, generator=seeded(2))
    changed = (mixed_targets.diagonal() < 1).float()
    assert changed.mean().item() == pytest.approx(0.3, abs=0.04)
    unchanged = changed == 0
    assert torch.equal(mixed[unchanged], waveforms[unchanged])
    assert torch.equal(mixed_targets[unchanged], targets[unchanged])


def test_mixup_spans_the_longer_clip():
    # Clip 0: 3 samples of 1.0; clip 1: 6 samples of 2.0; zero padding to 8.
    waveforms = torch.zeros(2, 8)
    waveforms[0, :3], waveforms[1, :6] = 1.0, 2.0
    targets = torch.eye(2)
    mixed, mixed_targets, lengths = mixup_waveforms(
        waveforms, targets, rate=1.0, generator=seeded(3), lengths=torch.tensor([3, 6])
    )
    lam0 = mixed_targets[0, 0]
    assert lengths.tolist() == [6, 6]
    torch.testing.assert_close(mixed[0, :3], torch.full((3,), lam0 * 1.0 + (1 - lam0) * 2.0))
    # Only the partner beyond clip 0's end.
    torch.testing.assert_close(mixed[0, 3:6], torch.full((3,), (1 - lam0) * 2.0))
    assert (mixed[:, 6:] == 0).all()


def test_mixup_is_deterministic_and_leaves_a_single_clip_alone():
    _, waveforms, targets = constant_batch(16)
    first = mixup_waveforms(waveforms, targets, rate=0.5, generator=seeded(7))
    second = mixup_waveforms(waveforms, targets, rate=0.5, generator=seeded(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    single = mixup_waveforms(waveforms[:1], targets[:1], rate=1.0, generator=seeded(7))
    assert torch.equal(single[0], waveforms[:1]) and torch.equal(single[1], targets[:1])


def test_mixup_errors_name_the_problem():
    with pytest.raises(ValueError, match="one-hot encode class ids"):
        mixup_waveforms(torch.zeros(2, 4), torch.tensor([0, 1]), rate=0.5)
    with pytest.raises(ValueError, match=r"rate=1.5"):
        mixup_waveforms(torch.zeros(2, 4), torch.eye(2), rate=1.5)


# ---------------------------------------------------------------------------------------------
# SpecAugment
# ---------------------------------------------------------------------------------------------


def test_spec_augment_matches_torchaudio_iid_masks():
    fbank = torch.randn(8, 100, 64)  # (B, T, F)
    torch.manual_seed(11)
    reference = torchaudio.transforms.FrequencyMasking(20, iid_masks=True)(fbank.transpose(1, 2).unsqueeze(1))
    reference = torchaudio.transforms.TimeMasking(30, iid_masks=True)(reference).squeeze(1).transpose(1, 2)
    # torch.manual_seed(s) and Generator().manual_seed(s) give the same stream.
    assert torch.equal(spec_augment(fbank, 20, 30, generator=seeded(11)), reference)


def read_masks(original: torch.Tensor, augmented: torch.Tensor, mask_value: float):
    """Per clip: (masked bins, masked frames) as index lists; asserts nothing else changed."""
    masked = augmented == mask_value
    assert torch.equal(augmented[~masked], original[~masked])
    result = []
    for clip in masked:  # (T, F)
        bins = clip.all(dim=0).nonzero().flatten().tolist()
        frames = clip.all(dim=1).nonzero().flatten().tolist()
        # Every masked cell lies in a masked bin column or a masked frame row.
        assert torch.equal(clip, clip.all(dim=0)[None, :] | clip.all(dim=1)[:, None])
        result.append((bins, frames))
    return result


def is_contiguous(indices):
    return indices == list(range(indices[0], indices[0] + len(indices))) if indices else True


def test_spec_augment_masks_have_bounded_widths_inside_valid_frames():
    batch_size, num_frames, num_bins = 300, 60, 32
    fbank = torch.rand(batch_size, num_frames, num_bins) + 1.0  # never equal to the mask value
    lengths = torch.randint(20, num_frames + 1, (batch_size,), generator=seeded(5))
    augmented = spec_augment(fbank, freq_mask=12, time_mask=16, generator=seeded(6), lengths=lengths, mask_value=-1.0)

    widths_f, widths_t = [], []
    for (bins, frames), length in zip(read_masks(fbank, augmented, -1.0), lengths.tolist()):
        assert is_contiguous(bins) and is_contiguous(frames)
        assert len(bins) < 12 and len(frames) < 16
        assert all(frame < length for frame in frames)
        widths_f.append(len(bins))
        widths_t.append(len(frames))
    # Widths are uniform over {0, ..., param - 1}: every width shows up in 300 clips.
    assert set(widths_f) == set(range(12)) and set(widths_t) == set(range(16))


def test_spec_augment_mask_never_exceeds_a_short_clip_and_zero_params_do_nothing():
    fbank = torch.rand(50, 40, 16) + 1.0
    lengths = torch.full((50,), 5)
    augmented = spec_augment(fbank, freq_mask=0, time_mask=30, generator=seeded(8), lengths=lengths, mask_value=-1.0)
    for bins, frames in read_masks(fbank, augmented, -1.0):
        assert bins == [] and all(frame < 5 for frame in frames)
    assert torch.equal(spec_augment(fbank, 0, 0, generator=seeded(8)), fbank)


def test_spec_augment_rejects_wrong_layout():
    with pytest.raises(ValueError, match=r"\(batch, frames, mel_bins\)"):
        spec_augment(torch.zeros(100, 128), 48, 192)


# ---------------------------------------------------------------------------------------------
# Speech Commands noise and roll
# ---------------------------------------------------------------------------------------------


def test_noise_and_roll_bounds():
    batch_size, num_frames, num_bins = 400, 50, 4
    # Frame t holds the value t, so after rolling floor(value) names the source frame (noise < 0.1).
    fbank = torch.arange(num_frames, dtype=torch.float64)[None, :, None]
    fbank = fbank.expand(batch_size, num_frames, num_bins).contiguous()
    out = add_noise_and_roll(fbank, generator=seeded(9))

    source = out.floor()
    shifts = (torch.arange(num_frames)[None, :, None] - source) % num_frames  # (B, T, F), out[t] = in[t - shift]
    shift = shifts[:, :1, :1]
    assert (shifts == shift).all()  # one shift per clip
    signed = torch.where(shift > num_frames // 2, shift - num_frames, shift).flatten()
    assert signed.min() >= -10 and signed.max() <= 10
    assert set(signed.tolist()) == set(range(-10, 11))

    noise = out - source
    assert noise.min() >= 0 and noise.max() < 0.1
    # One noise scale per clip, uniform in [0, 0.1): the clips' largest noise values spread over it.
    per_clip_max = noise.amax(dim=(1, 2))
    assert per_clip_max.min() < 0.01 and per_clip_max.max() > 0.09


def test_noise_and_roll_is_deterministic():
    fbank = torch.randn(3, 20, 8)
    assert torch.equal(add_noise_and_roll(fbank, seeded(4)), add_noise_and_roll(fbank, seeded(4)))
    assert not torch.equal(add_noise_and_roll(fbank, seeded(4)), add_noise_and_roll(fbank, seeded(5)))
