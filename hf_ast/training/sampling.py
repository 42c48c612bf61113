"""Class-balanced sampling for full AudioSet, as in the reference recipe (YuanGongND/ast).

AudioSet's labels are very unbalanced (Speech and Music are on about half the clips, many classes
on a few hundred), so the reference draws training clips with replacement, each with probability
proportional to a weight that favours clips carrying rare labels
(`egs/audioset/gen_weight_file.py`): label weight `1000 / (label count + 0.01)`, clip weight the
sum of its labels' weights. One epoch is as many draws as the dataset has clips.

`SeededWeightedSampler` makes that draw once per epoch from a seed, identically on every process;
Accelerate's prepared loader deals the batches out.
"""

from collections.abc import Iterator

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


class SeededWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement, one draw per epoch from a seed: the same on every process.

    Each epoch draws `num_samples` indices with `torch.multinomial(weights, replacement=True)` from a
    generator seeded with `seed + epoch`, so every process makes the same draw without communicating,
    and a resumed run redraws the epoch it stopped in. With Accelerate, `accelerator.prepare(dataloader)`
    deals each process its share of the batches, and `accelerator.skip_first_batches` skips what a
    resumed epoch already trained on.

    Args:
        weights: `(N,)` non-negative sampling weights (e.g. `balanced_sample_weights`).
        num_samples: draws per epoch; the dataset size `N` by default (the reference's epoch).
        seed: base seed, the same on every process.
    """

    def __init__(self, weights, num_samples: int | None = None, seed: int = 0):
        weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if weights.dim() != 1 or len(weights) == 0:
            raise ValueError(f"weights has shape {tuple(weights.shape)}; pass one weight per dataset item (N,).")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero.")
        num_samples = len(weights) if num_samples is None else int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be positive.")
        self.weights = weights
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def epoch_draw(self, epoch: int | None = None) -> torch.Tensor:
        """The whole `(num_samples,)` draw of an epoch."""
        generator = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's draw; call at the start of every epoch, on every process, before iterating."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        yield from self.epoch_draw().tolist()

    def __len__(self) -> int:
        return self.num_samples


__all__ = ["SeededWeightedSampler", "balanced_sample_weights"]
