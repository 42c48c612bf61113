"""Training recipes: the reference implementation's presets, and `auto`, derived from the data and the run.

Presets (`audioset`, `audioset-balanced`, `esc50`, `speechcommands`) are the reference
repository's run scripts (YuanGongND/ast, `egs/*/run.sh`) for the paper's datasets: Adam (betas
0.95/0.999, weight decay 5e-7), linear warm-up over the first 1000 steps where used, then the
learning rate multiplied by `lr_decay_gamma` every `lr_decay_every` epochs from
`lr_decay_start_epoch` on. They assume those datasets' sizes: full AudioSet's 1000-step warm-up
and per-epoch halving are the whole schedule of a few-hundred-step run on a small set.

`auto` (the default) is for everything else; `derive_auto` documents each rule. Every value a
recipe fills is recorded with where it came from (`flag`, `recipe NAME`, `auto: why`), and
`check_contradictions` stops a run whose settings cannot work before it trains.
"""

import math
from dataclasses import asdict, dataclass

from ..feature_extraction_hf_ast import AUDIOSET_MEAN, AUDIOSET_STD


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
    norm_mean: float = AUDIOSET_MEAN
    norm_std: float = AUDIOSET_STD

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


# -- auto: defaults derived from the data and the run ---------------------------------------------

# Flags a recipe fills when the user leaves them unset (None); training_args.json says where each came from.
RECIPE_FLAGS = (
    "learning_rate", "per_device_train_batch_size", "num_train_epochs", "optimizer", "weight_decay", "adam_beta1",
    "adam_beta2", "lr_scheduler_type", "lr_decay_start_epoch", "lr_decay_every", "lr_decay_gamma", "warmup_steps",
    "loss", "freq_mask", "time_mask", "mask_value", "mixup", "balanced_sampling", "weight_averaging_start_epoch",
    "noise", "channel_reduction", "max_length", "norm_mean", "norm_std", "spec_augment",
)

AUTO = "auto"
# The reference's SpecAugment widths relative to the input they were set for. ESC-50's (24 of 128
# bins, 96 of 512 frames) are used for `auto`: a small single-label fine-tuning set like most users'.
# AudioSet's (48/128, 192/1024) and Speech Commands' (48/128, 48/128) mask up to 3/8 of an axis.
AUTO_FREQ_MASK_RATIO = 24 / 128
AUTO_TIME_MASK_RATIO = 96 / 512
AUTO_WARMUP_FRACTION = 0.05
# Why `auto` masks single-label data only. benchmarks/bench_recipes.py, 800 clips, 6 epochs, a
# randomly initialised DeiT (no ImageNet weights offline), AudioSet normalisation, masks at the
# ratios above against none (the plain loop without masks in brackets): spoken words accuracy 0.280
# vs 0.157 [0.128] and 8 kHz speech 0.202 vs 0.200 [0.197] (2 seeds each); the multi-label events
# mAP 0.628 vs 0.698 [0.676] (3 seeds). A time mask can erase the only evidence of a short event in
# a clip whose target still names it; one word spans most of its clip.
SPEC_AUGMENT_SINGLE = ("one label per clip: masks at ESC-50's ratios helped spoken words (accuracy 0.28 vs 0.16) "
                       "and left 8 kHz speech even in the recipe benchmark")
SPEC_AUGMENT_MULTI = ("off for label lists: masks cost 0.07 mAP on the recipe benchmark's multi-label events (a mask "
                      "can erase a short event its target still names); --spec_augment turns them on")
# A label this many times rarer than the most frequent one makes balanced sampling worth it (full
# AudioSet's ratio is in the thousands; a set built for classification is near 1).
BALANCE_RATIO = 20.0
# The first and second moments of Adam-type optimizers: AdamW as transformers' Trainer defaults.
AUTO_STATIC = {
    "per_device_train_batch_size": (16, "a batch that fits a base-size AST at 1024 frames on one 16 GB GPU"),
    "num_train_epochs": (10, "enough passes for a small set to converge under a cosine schedule"),
    "optimizer": ("adamw", "decoupled weight decay (transformers' Trainer default)"),
    "weight_decay": (0.01, "AdamW's usual decay; the reference's 5e-7 is effectively none"),
    "adam_beta1": (0.9, "Adam's default; the reference's 0.95 suits its long AudioSet runs"),
    "adam_beta2": (0.999, "Adam's default"),
    "lr_scheduler_type": ("cosine", "warm-up then cosine decay over the whole run, whatever its length"),
    "channel_reduction": ("mean", "the paper's averaging keeps the DeiT patch projection's input scale"),
    "mask_value": ("mean", "SpecAugment's own choice; the reference's log-mel 0 is a loud band on quiet data"),
    "mixup": (0.0, "off: on small single-source sets it slowed learning in the recipe benchmark"),
    "noise": (False, "off: the reference uses it only for Speech Commands"),
    "weight_averaging_start_epoch": (None, "off: a cosine schedule already ends on small steps"),
}
# Flags that only the reference's step schedule reads.
STEP_SCHEDULE_FLAGS = ("lr_decay_start_epoch", "lr_decay_every", "lr_decay_gamma")


# Patchout (PaSST) is off in `auto` and in every preset: a saving to opt into (README, Patchout).
PATCHOUT_FIELDS = ("patchout_time", "patchout_freq", "patchout_random")
PATCHOUT_OFF = "off (PaSST's AudioSet patchout: --patchout_time 40 --patchout_freq 4)"


def fill_recipe(args, flags) -> dict[str, str]:
    """Fill unset (None) `flags` and patchout fields of `args` from its recipe; return `{flag: source}` for each.

    A preset fills everything it defines; `auto` fills what needs no data (`AUTO_STATIC`) and
    leaves the rest None for `derive_auto`, which needs the data and the run's length.
    """
    sources = {name: "flag" for name in (*flags, *PATCHOUT_FIELDS) if getattr(args, name, None) is not None}
    for name in PATCHOUT_FIELDS:
        if getattr(args, name, None) is None:
            setattr(args, name, 0)
            sources[name] = f"{'auto' if args.recipe == AUTO else f'recipe {args.recipe}'}: {PATCHOUT_OFF}"
    if args.recipe == AUTO:
        for name, (value, why) in AUTO_STATIC.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
                sources[name] = f"auto: {why}"
        return sources
    preset = RECIPES[args.recipe].as_dict()
    preset.update(optimizer="adam", weight_decay=5e-7, adam_beta1=0.95, adam_beta2=0.999, lr_scheduler_type="step",
                  mask_value="reference")
    for name in flags:
        if getattr(args, name) is None and name in preset:
            setattr(args, name, preset[name])
            sources[name] = f"recipe {args.recipe}"
    return sources


def set_auto(args, sources: dict, name: str, value, why: str):
    """Give an unset flag its derived value and record why; a flag the user set is left alone."""
    if getattr(args, name) is None:
        setattr(args, name, value)
        sources[name] = f"auto: {why}"


def label_imbalance(targets) -> float:
    """Most frequent label count over least frequent (labels that occur at all); 1.0 for balanced data."""
    counts = [count for count in (targets > 0).sum(0).tolist() if count > 0]
    return max(counts) / min(counts) if counts else 1.0


def derive_auto(args, sources: dict, *, multi_label: bool, imbalance: float, clip_frames: int | None,
                audio_checkpoint: bool):
    """Fill the flags `auto` derives from the data; no-op for flags already set.

    The warm-up needs the run's length, known once the loaders are built: `derive_auto_warmup`.
    """
    set_auto(args, sources, "loss", "bce" if multi_label else "ce",
             "the label column holds lists (multi-label)" if multi_label else "one label per clip")
    if clip_frames is not None:
        set_auto(args, sources, "max_length", min(max(clip_frames, 16), 1024),
                 f"the longest of the sampled training clips ({clip_frames} frames), at most 1024")
    set_auto(args, sources, "spec_augment", not multi_label,
             SPEC_AUGMENT_MULTI if multi_label else SPEC_AUGMENT_SINGLE)
    if args.spec_augment:
        if args.max_length is not None:
            set_auto(args, sources, "time_mask", max(1, int(args.max_length * AUTO_TIME_MASK_RATIO)),
                     f"SpecAugment: ESC-50's ratio of 96/512 frames, scaled to {args.max_length} frames")
        set_auto(args, sources, "freq_mask", max(1, int(args.num_mel_bins * AUTO_FREQ_MASK_RATIO)),
                 f"SpecAugment: ESC-50's ratio of 24/128 bins, scaled to {args.num_mel_bins} bins")
    else:
        for name in ("time_mask", "freq_mask"):
            set_auto(args, sources, name, 0, "SpecAugment off (--spec_augment masks at ESC-50's ratios)")
    set_auto(args, sources, "learning_rate", 1e-5 if audio_checkpoint else 1e-4,
             "fine-tuning an audio checkpoint (the reference's ESC-50 rate)" if audio_checkpoint
             else "from an image backbone (the reference's rate for ESC-50 without AudioSet)")
    balanced = multi_label and imbalance >= BALANCE_RATIO
    set_auto(args, sources, "balanced_sampling", balanced,
             f"multi-label labels {imbalance:.0f}x apart in frequency "
             f"({'>=' if balanced else '<'} {BALANCE_RATIO:.0f}x)"
             if multi_label else "single-label data")
    if args.lr_scheduler_type != "step":
        for name in STEP_SCHEDULE_FLAGS:
            if getattr(args, name) is None:
                sources[name] = f"unused ({args.lr_scheduler_type} schedule)"
    else:  # the step schedule asked for by flag: it decays only as the --lr_decay_* flags say
        for name, value in zip(STEP_SCHEDULE_FLAGS, (1, 1, 1.0)):
            set_auto(args, sources, name, value, "no step decay unless the --lr_decay_* flags ask for one")


def derive_auto_warmup(args, sources: dict, total_steps: int):
    """`auto`'s warm-up: a fixed fraction of the run's optimizer steps (unless --warmup_steps was given)."""
    set_auto(args, sources, "warmup_steps", math.ceil(AUTO_WARMUP_FRACTION * total_steps),
             f"{AUTO_WARMUP_FRACTION:.0%} of the run's {total_steps} optimizer steps")


def schedule_factors(args, total_steps: int, steps_per_epoch: int | None) -> list[float]:
    """The learning-rate factor (times the base rate) of each optimizer step of the run."""
    if args.lr_scheduler_type == "step":
        def factor(step):
            epoch = step // steps_per_epoch + 1 if steps_per_epoch else 1
            return warmup_factor(step, args.warmup_steps) * step_decay_factor(
                epoch, args.lr_decay_start_epoch, args.lr_decay_every, args.lr_decay_gamma)
        return [factor(step) for step in range(total_steps)]
    import torch
    import transformers

    # Read the schedule's own factor function: stepping a throw-away optimizer would fire the step
    # hooks that profilers and tests register.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = transformers.get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                                           num_training_steps=total_steps)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return [1.0] * total_steps  # a schedule that follows the metric (reduce_lr_on_plateau): nothing to check
    return [scheduler.lr_lambdas[0](step) for step in range(total_steps)]


def check_contradictions(args, sources: dict, *, multi_label: bool, total_steps: int,
                         steps_per_epoch: int | None) -> None:
    """Raise a ValueError naming the flag and the fix for settings that cannot train as meant."""
    problems = []

    def origin(name):
        return f"--{name} {getattr(args, name)} ({sources.get(name, 'default')})"

    if args.warmup_steps and args.warmup_steps >= total_steps:
        problems.append(f"{origin('warmup_steps')} is not shorter than the run's {total_steps} optimizer steps, "
                        "so the rate never reaches its base value: pass --warmup_steps N with N well under that "
                        "(auto uses 5%), or train longer")
    if args.time_mask and args.time_mask >= args.max_length:
        problems.append(f"{origin('time_mask')} can mask the whole {args.max_length}-frame input: pass a smaller "
                        f"--time_mask (auto: {int(args.max_length * AUTO_TIME_MASK_RATIO)}) or 0 for none")
    if args.freq_mask and args.freq_mask >= args.num_mel_bins:
        problems.append(f"{origin('freq_mask')} can mask all {args.num_mel_bins} mel bins: pass a smaller "
                        f"--freq_mask (auto: {int(args.num_mel_bins * AUTO_FREQ_MASK_RATIO)}) or 0 for none")
    factors = schedule_factors(args, total_steps, steps_per_epoch)[: max(1, total_steps // 2)]
    low = next((step for step, factor in enumerate(factors) if step >= args.warmup_steps and factor < 0.01), None)
    if low is not None:
        fix = (f"raise --lr_decay_start_epoch / --lr_decay_every / --lr_decay_gamma "
               f"({origin('lr_decay_start_epoch')}, {origin('lr_decay_every')}, {origin('lr_decay_gamma')}), "
               "or pass --lr_scheduler_type cosine"
               if args.lr_scheduler_type == "step" else "pass --lr_scheduler_type cosine or linear")
        problems.append(f"the {args.lr_scheduler_type} schedule brings the learning rate under 1% of its base at step "
                        f"{low + 1} of {total_steps}, before half the run: {fix}")
    if multi_label and args.loss == "ce":
        problems.append(f"{origin('loss')}: the label column holds lists (multi-label) and cross-entropy trains one "
                        "label per clip: pass --loss bce")
    if not multi_label and args.loss == "bce" and sources.get("loss") == "flag":
        problems.append(f"{origin('loss')}: every clip has one label, and sigmoid scores would not sum to one: pass "
                        "--loss ce (the speechcommands recipe keeps the reference's BCE on purpose)")
    if problems:
        raise ValueError("the training settings contradict each other or the data:\n- " + "\n- ".join(problems))


__all__ = [
    "AUTO",
    "RECIPES",
    "RECIPE_FLAGS",
    "Recipe",
    "check_contradictions",
    "derive_auto",
    "derive_auto_warmup",
    "fill_recipe",
    "label_imbalance",
    "schedule_factors",
    "step_decay_factor",
    "warmup_factor",
]
