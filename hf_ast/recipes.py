"""The reference implementation's per-dataset training recipes (YuanGongND/ast, `egs/*/run.sh`).

Each preset fills the training script's flags that the user did not set; every value can be
overridden by its own flag. Figures from the reference run scripts, as summarised in the
team's AST_FACTS: Adam (betas 0.95/0.999, weight decay 5e-7), linear warm-up over the first
1000 steps where used, then the learning rate multiplied by `lr_decay_gamma` every
`lr_decay_every` epochs from `lr_decay_start_epoch` on.
"""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    learning_rate: float
    per_device_train_batch_size: int
    num_train_epochs: int
    lr_decay_start_epoch: int
    lr_decay_every: int
    lr_decay_gamma: float
    warmup_steps: int
    loss: str  # "bce" (multi-label, also for Speech Commands in the reference) or "ce"
    freq_mask: int
    time_mask: int
    mixup: float
    balanced_sampling: bool
    weight_averaging_start_epoch: int | None  # 1-based epoch from which epoch weights are averaged
    noise: bool
    channel_reduction: str = "sum"  # the reference sums DeiT's RGB kernels
    max_length: int = 1024
    norm_mean: float = -4.2677393
    norm_std: float = 4.5689974

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    # Full AudioSet (2M clips): 5 epochs, averaging the weights of epochs 1-5 gives 0.459 mAP.
    "audioset": Recipe(
        learning_rate=1e-5, per_device_train_batch_size=12, num_train_epochs=5, lr_decay_start_epoch=2,
        lr_decay_every=1, lr_decay_gamma=0.5, warmup_steps=1000, loss="bce", freq_mask=48, time_mask=192,
        mixup=0.5, balanced_sampling=True, weight_averaging_start_epoch=1, noise=False,
    ),
    # Balanced AudioSet (20k clips): 25 epochs, averaging epochs 6-25, 0.347 mAP.
    "audioset-balanced": Recipe(
        learning_rate=5e-5, per_device_train_batch_size=12, num_train_epochs=25, lr_decay_start_epoch=10,
        lr_decay_every=5, lr_decay_gamma=0.5, warmup_steps=1000, loss="bce", freq_mask=48, time_mask=192,
        mixup=0.5, balanced_sampling=False, weight_averaging_start_epoch=6, noise=False,
    ),
    # ESC-50 (5 s clips, 512 frames), from an AudioSet-trained AST: 95.6% over 5 folds.
    # Use learning_rate 1e-4 when starting from ImageNet only.
    "esc50": Recipe(
        learning_rate=1e-5, per_device_train_batch_size=48, num_train_epochs=25, lr_decay_start_epoch=5,
        lr_decay_every=1, lr_decay_gamma=0.85, warmup_steps=0, loss="ce", freq_mask=24, time_mask=96,
        mixup=0.0, balanced_sampling=False, weight_averaging_start_epoch=None, noise=False,
        max_length=512, norm_mean=-6.6268077, norm_std=5.358466,
    ),
    # Speech Commands V2-35 (1 s clips, 128 frames): 98.12%; BCE as in the reference.
    "speechcommands": Recipe(
        learning_rate=2.5e-4, per_device_train_batch_size=128, num_train_epochs=30, lr_decay_start_epoch=5,
        lr_decay_every=1, lr_decay_gamma=0.85, warmup_steps=0, loss="bce", freq_mask=48, time_mask=48,
        mixup=0.6, balanced_sampling=False, weight_averaging_start_epoch=None, noise=True,
        max_length=128, norm_mean=-6.845978, norm_std=5.5654526,
    ),
}


def step_decay_factor(epoch: int, start_epoch: int, every: int, gamma: float) -> float:
    """Learning-rate factor during 1-based `epoch` (the reference's per-epoch MultiStepLR).

    The reference steps `MultiStepLR(milestones=range(start, 1000, every))` after each epoch, so
    the rate during epoch E is gamma ** (number of milestones <= E - 1): with start 2 and every 1
    (full AudioSet), epochs 1-2 run at the base rate and epoch 3 at gamma times it.
    """
    finished = epoch - 1
    if finished < start_epoch:
        return 1.0
    return gamma ** ((finished - start_epoch) // every + 1)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up over the first `warmup_steps` optimizer steps.

    The reference sets lr = step / 1000 * lr every 50 steps (so its first 50 steps run at 0);
    this ramps every step and never at 0.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


__all__ = ["RECIPES", "Recipe", "step_decay_factor", "warmup_factor"]
