"""Class-balanced sampling for full AudioSet, as in the reference recipe (YuanGongND/ast).

AudioSet's labels are very unbalanced (Speech and Music are on about half the clips, many classes
on a few hundred), so the reference draws training clips with replacement, each with probability
proportional to a weight that favours clips carrying rare labels
(`egs/audioset/gen_weight_file.py`): label weight `1000 / (label count + 0.01)`, clip weight the
sum of its labels' weights. One epoch is as many draws as the dataset has clips.

`DistributedWeightedSampler` makes that draw once per epoch from a seed, identically on every
process, and hands each rank its own slice, so ranks never overlap and the union of all ranks'
indices is exactly the single-process draw.
"""

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

# Reference constants (gen_weight_file.py): 1000 only scales the weights; the 0.01 keeps a label
# that never occurs from dividing by zero.
LABEL_WEIGHT_NUMERATOR = 1000.0
LABEL_COUNT_OFFSET = 0.01


def balanced_sample_weights(multi_hot) -> np.ndarray:
    """Per-clip sampling weights `(N,)` float64 from multi-hot labels `(N, C)` (numpy, torch or nested lists).

    label_weight[c] = 1000 / (number of clips with label c + 0.01); weight[i] = sum of
    label_weight over clip i's labels. A clip without labels gets weight 0 and is never drawn.
    For millions of clips, where a dense `(N, C)` matrix is too large, use
    `balanced_sample_weights_from_ids`.
    """
    if isinstance(multi_hot, torch.Tensor):
        multi_hot = multi_hot.detach().cpu().numpy()
    labels = np.asarray(multi_hot)
    if labels.ndim != 2:
        raise ValueError(f"multi_hot has shape {labels.shape}; pass (num_clips, num_labels) multi-hot labels.")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("multi_hot must hold only 0 and 1 (or booleans); got other values.")
    labels = labels.astype(np.float64)
    label_weight = LABEL_WEIGHT_NUMERATOR / (labels.sum(axis=0) + LABEL_COUNT_OFFSET)  # (C,)
    return labels @ label_weight  # (N,)


def balanced_sample_weights_from_ids(label_ids: Sequence[Sequence[int]], num_labels: int) -> np.ndarray:
    """`balanced_sample_weights` from each clip's list of label ids, without building the `(N, C)` matrix.

    A clip listing a label twice counts it once, as a multi-hot row would.
    """
    clips = [sorted(set(int(i) for i in ids)) for ids in label_ids]
    for index, ids in enumerate(clips):
        if ids and (ids[0] < 0 or ids[-1] >= num_labels):
            raise ValueError(f"clip {index} has label ids {ids}, outside [0, {num_labels}).")
    flat = np.fromiter((i for ids in clips for i in ids), dtype=np.int64)
    owner = np.repeat(np.arange(len(clips)), [len(ids) for ids in clips])  # clip of each flat entry
    label_weight = LABEL_WEIGHT_NUMERATOR / (np.bincount(flat, minlength=num_labels) + LABEL_COUNT_OFFSET)
    return np.bincount(owner, weights=label_weight[flat], minlength=len(clips)).astype(np.float64)


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement, split over processes; resumable mid-epoch.

    Each epoch draws `num_replicas * ceil(num_samples / num_replicas)` indices with
    `torch.multinomial(weights, replacement=True)` from a generator seeded with `seed + epoch`: the
    same draw on every process, with no communication. Rank r takes every `num_replicas`-th index
    starting at r, so the ranks' slices are disjoint positions of one draw, equally long, and
    together the single-process draw (when `num_samples` divides evenly).

    With Accelerate: `accelerator.prepare(dataloader)` already gives each process every
    `num_processes`-th batch. Then build this sampler with `num_replicas=1, rank=0` (every process
    makes the full, identical draw and Accelerate splits it); with the defaults under
    `torch.distributed` the data would be split twice. Use the defaults (or explicit ranks) with a
    plain `DataLoader` that is not prepared.

    Resumption: `state_dict()` records the epoch and how many indices this sampler has handed out
    in it; after `load_state_dict`, the next iteration of that epoch skips them. A `DataLoader`
    with workers fetches a few batches ahead, so the count can exceed the batches trained on; pass
    the exact number to `state_dict(consumed=...)` (samples per rank) if that matters. Do not
    also skip batches with `accelerator.skip_first_batches`: that skips them a second time (with
    this sampler's deterministic draw, `skip_first_batches` alone is a valid alternative).

    Args:
        weights: `(N,)` non-negative sampling weights (e.g. `balanced_sample_weights`).
        num_samples: draws per epoch over all ranks; the dataset size `N` by default (the reference's epoch).
        num_replicas: number of processes; `torch.distributed`'s world size (1 without it) by default.
        rank: this process's rank; `torch.distributed`'s rank (0 without it) by default.
        seed: base seed, the same on every process.
    """

    def __init__(
        self,
        weights,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ):
        weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if weights.dim() != 1 or len(weights) == 0:
            raise ValueError(f"weights has shape {tuple(weights.shape)}; pass one weight per dataset item (N,).")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero.")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas}).")
        num_samples = len(weights) if num_samples is None else int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be positive.")
        self.weights = weights
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.num_samples_per_replica = math.ceil(num_samples / num_replicas)
        self.total_size = self.num_samples_per_replica * num_replicas
        self.epoch = 0
        self._consumed = 0  # indices of this rank handed out in `self.epoch`
        self._skip = 0  # indices to skip at the start of the next iteration (after load_state_dict)

    def epoch_draw(self, epoch: int | None = None) -> torch.Tensor:
        """The whole `(total_size,)` draw of an epoch, shared by all ranks."""
        generator = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        return torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's draw; call at the start of every epoch, on every process, before iterating."""
        if epoch != self.epoch:
            self._skip = 0  # a resumed position belongs to the epoch it was saved in
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_draw()[self.rank :: self.num_replicas].tolist()  # (num_samples_per_replica,)
        start, self._skip = self._skip, 0
        self._consumed = start
        for index in indices[start:]:
            self._consumed += 1
            yield index

    def __len__(self) -> int:
        # The full epoch, also when resuming mid-epoch (that iteration yields fewer).
        return self.num_samples_per_replica

    def state_dict(self, consumed: int | None = None) -> dict:
        """Epoch and position (indices of this rank consumed in it); `consumed` overrides the counted position."""
        return {
            "epoch": self.epoch,
            "consumed": self._consumed if consumed is None else int(consumed),
            "seed": self.seed,
            "num_samples": self.num_samples,
            "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration of `state["epoch"]` starts after the consumed indices."""
        for key in ("seed", "num_samples", "num_replicas"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {key}={getattr(self, key)}; resume "
                    "with the same seed, dataset size and number of processes, or start a fresh epoch without "
                    "loading the sampler state."
                )
        if not 0 <= state["consumed"] <= self.num_samples_per_replica:
            raise ValueError(f"consumed={state['consumed']} is outside [0, {self.num_samples_per_replica}].")
        self.epoch = state["epoch"]
        self._consumed = self._skip = state["consumed"]


__all__ = [
    "DistributedWeightedSampler",
    "balanced_sample_weights",
    "balanced_sample_weights_from_ids",
]
