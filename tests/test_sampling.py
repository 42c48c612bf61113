"""Balanced AudioSet sampling: reference weights and a deterministic, rank-split weighted sampler."""

import itertools

import numpy as np
import pytest
import torch

from hf_ast.training.sampling import DistributedWeightedSampler, balanced_sample_weights, balanced_sample_weights_from_ids


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
    np.testing.assert_allclose(balanced_sample_weights(torch.tensor(multi_hot, dtype=torch.bool)), expected, rtol=1e-12)
    np.testing.assert_allclose(balanced_sample_weights_from_ids([[0, 1], [0], [2, 0, 2], []], 3), expected, rtol=1e-12)


def test_weight_errors_are_clear():
    with pytest.raises(ValueError, match=r"\(num_clips, num_labels\)"):
        balanced_sample_weights(np.ones(5))
    with pytest.raises(ValueError, match="only 0 and 1"):
        balanced_sample_weights(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"clip 1 has label ids \[7\], outside \[0, 3\)"):
        balanced_sample_weights_from_ids([[0], [7]], 3)


def test_draw_frequencies_converge_to_the_weights():
    weights = [1.0, 2.0, 3.0, 4.0, 0.0]
    sampler = DistributedWeightedSampler(weights, num_samples=200_000, num_replicas=1, rank=0)
    counts = np.bincount(list(sampler), minlength=5) / 200_000
    np.testing.assert_allclose(counts, np.array(weights) / 10, atol=0.005)
    assert counts[4] == 0


def test_ranks_get_disjoint_equal_slices_of_the_single_process_draw():
    weights = np.random.default_rng(0).random(101)
    single = list(DistributedWeightedSampler(weights, num_samples=1000, num_replicas=1, rank=0, seed=3))
    ranks = [list(DistributedWeightedSampler(weights, num_samples=1000, num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 500
    interleaved = [index for pair in zip(*ranks) for index in pair]  # positions 0, 2, 4, ... then 1, 3, 5, ...
    assert interleaved == single

    # Not divisible: every rank gets ceil(10 / 3) = 4, drawn from one shared draw of 12.
    uneven = [DistributedWeightedSampler(weights, num_samples=10, num_replicas=3, rank=r) for r in range(3)]
    assert [len(s) for s in uneven] == [len(list(s)) for s in uneven] == [4, 4, 4]
    shared = uneven[0].epoch_draw().tolist()
    assert [list(s) for s in uneven] == [shared[r::3] for r in range(3)]


def test_set_epoch_changes_the_draw_deterministically():
    weights = np.ones(50)
    sampler = DistributedWeightedSampler(weights, seed=1)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0  # same epoch, same draw
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    other = DistributedWeightedSampler(weights, seed=1)
    other.set_epoch(1)
    assert list(other) == epoch1
    assert list(DistributedWeightedSampler(weights, seed=2)) != epoch0


def test_resume_skips_consumed_indices_then_runs_full_epochs():
    weights = np.random.default_rng(1).random(64)
    sampler = DistributedWeightedSampler(weights, num_replicas=2, rank=1, seed=5)
    sampler.set_epoch(3)
    full = list(sampler)
    iterator = iter(sampler)
    consumed = list(itertools.islice(iterator, 13))
    state = sampler.state_dict()
    assert state["epoch"] == 3 and state["consumed"] == 13 and consumed == full[:13]

    resumed = DistributedWeightedSampler(weights, num_replicas=2, rank=1, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the training loop re-enters the saved epoch
    assert list(resumed) == full[13:]
    assert list(resumed) == full  # the next pass over the same epoch is whole again
    resumed.set_epoch(4)
    sampler.set_epoch(4)
    assert list(resumed) == list(sampler)

    # An explicit position overrides the counted one (DataLoader workers fetch ahead).
    exact = DistributedWeightedSampler(weights, num_replicas=2, rank=1, seed=5)
    exact.load_state_dict(sampler.state_dict(consumed=7) | {"epoch": 3})
    assert list(exact) == full[7:]


def test_resume_with_another_world_size_is_refused():
    state = DistributedWeightedSampler(np.ones(8), num_replicas=2, rank=0).state_dict()
    with pytest.raises(ValueError, match="num_replicas=2 but this sampler has num_replicas=4"):
        DistributedWeightedSampler(np.ones(8), num_replicas=4, rank=0).load_state_dict(state)


def test_sampler_errors_and_dataloader_use():
    with pytest.raises(ValueError, match="not all zero"):
        DistributedWeightedSampler([0.0, 0.0])
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, num_replicas=2\)"):
        DistributedWeightedSampler([1.0], num_replicas=2, rank=2)
    sampler = DistributedWeightedSampler([0.0, 1.0, 0.0], num_samples=6)
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=4, sampler=sampler)
    assert [batch.tolist() for batch in loader] == [[1, 1, 1, 1], [1, 1]]
