"""Balanced AudioSet sampling: reference weights and a deterministic, seeded weighted sampler."""

import numpy as np
import pytest
import torch

from hf_ast.training.sampling import SeededWeightedSampler, balanced_sample_weights


def test_weights_follow_the_reference_formula():
    multi_hot = np.array(
        [
            [1, 1, 0],
            [1, 0, 0],
            [1, 0, 1],
            [0, 0, 0],  # no label: never drawn
        ]
    )
    # Label counts 3, 1, 1 -> label weights 1000 / 3.01, 1000 / 1.01, 1000 / 1.01.
    common, rare = 1000 / 3.01, 1000 / 1.01
    expected = [common + rare, common, common + rare, 0.0]
    np.testing.assert_allclose(balanced_sample_weights(multi_hot), expected, rtol=1e-12)
    as_bool = torch.tensor(multi_hot, dtype=torch.bool)
    np.testing.assert_allclose(balanced_sample_weights(as_bool), expected, rtol=1e-12)


def test_weight_errors_are_clear():
    with pytest.raises(ValueError, match=r"\(num_clips, num_labels\)"):
        balanced_sample_weights(np.ones(5))
    with pytest.raises(ValueError, match="only 0 and 1"):
        balanced_sample_weights(np.array([[0.5, 1.0]]))


def test_draw_frequencies_converge_to_the_weights():
    weights = [1.0, 2.0, 3.0, 4.0, 0.0]
    sampler = SeededWeightedSampler(weights, num_samples=200_000)
    counts = np.bincount(list(sampler), minlength=5) / 200_000
    np.testing.assert_allclose(counts, np.array(weights) / 10, atol=0.005)
    assert counts[4] == 0


def test_the_draw_is_torch_multinomial_seeded_by_seed_plus_epoch():
    weights = np.random.default_rng(0).random(101)
    sampler = SeededWeightedSampler(weights, num_samples=1000, seed=3)
    sampler.set_epoch(2)
    generator = torch.Generator().manual_seed(3 + 2)
    expected = torch.multinomial(torch.as_tensor(weights), 1000, replacement=True, generator=generator).tolist()
    assert list(sampler) == expected and len(sampler) == 1000


def test_set_epoch_changes_the_draw_deterministically():
    weights = np.ones(50)
    sampler = SeededWeightedSampler(weights, seed=1)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0  # same epoch, same draw
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    other = SeededWeightedSampler(weights, seed=1)
    other.set_epoch(1)
    assert list(other) == epoch1  # another process, or a resumed run, draws the same
    assert list(SeededWeightedSampler(weights, seed=2)) != epoch0


def test_sampler_errors_and_dataloader_use():
    with pytest.raises(ValueError, match="not all zero"):
        SeededWeightedSampler([0.0, 0.0])
    with pytest.raises(ValueError, match="num_samples=0 must be positive"):
        SeededWeightedSampler([1.0], num_samples=0)
    sampler = SeededWeightedSampler([0.0, 1.0, 0.0], num_samples=6)
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=4, sampler=sampler)
    assert [batch.tolist() for batch in loader] == [[1, 1, 1, 1], [1, 1]]
