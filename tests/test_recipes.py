"""Training defaults: the `auto` recipe, where every value came from, and settings that stop a run."""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_ast.recipes import (
    AUTO_STATIC,
    RECIPES,
    check_contradictions,
    derive_auto,
    fill_recipe,
    label_imbalance,
    schedule_factors,
)

ROOT = Path(__file__).resolve().parents[1]
FLAGS = (
    "learning_rate", "per_device_train_batch_size", "num_train_epochs", "optimizer", "weight_decay", "adam_beta1",
    "adam_beta2", "lr_scheduler_type", "lr_decay_start_epoch", "lr_decay_every", "lr_decay_gamma", "warmup_steps",
    "loss", "freq_mask", "time_mask", "mixup", "balanced_sampling", "weight_averaging_start_epoch", "noise",
    "channel_reduction", "max_length", "norm_mean", "norm_std",
)


def namespace(recipe="auto", **values):
    args = argparse.Namespace(recipe=recipe, num_mel_bins=128, **{name: None for name in FLAGS})
    for name, value in values.items():
        setattr(args, name, value)
    return args


# -- filling and deriving -----------------------------------------------------------------------


def test_presets_fill_the_reference_values_and_say_so():
    args = namespace("audioset", learning_rate=3e-4)
    sources = fill_recipe(args, FLAGS)
    assert args.learning_rate == 3e-4 and sources["learning_rate"] == "flag"
    assert args.warmup_steps == 1000 and sources["warmup_steps"] == "recipe audioset"
    assert (args.optimizer, args.weight_decay, args.adam_beta1, args.lr_scheduler_type) == ("adam", 5e-7, 0.95, "step")
    assert args.time_mask == RECIPES["audioset"].time_mask == 192


def test_auto_derives_from_the_data_and_the_run():
    args = namespace(num_train_epochs=4)
    sources = fill_recipe(args, FLAGS)
    assert args.optimizer == "adamw" and sources["optimizer"].startswith("auto: ")
    assert args.num_train_epochs == 4 and sources["num_train_epochs"] == "flag"
    derive_auto(args, sources, multi_label=False, imbalance=1.0, clip_frames=98, audio_checkpoint=False)
    assert (args.loss, args.max_length, args.balanced_sampling) == ("ce", 98, False)
    # The reference's ESC-50 ratios (96/512 frames, 24/128 bins), so never as wide as the input.
    assert args.time_mask == int(98 * 96 / 512) == 18 and args.freq_mask == 24
    assert args.learning_rate == 1e-4 and args.warmup_steps is None  # the warm-up waits for the run's length
    derive_auto(args, sources, multi_label=False, imbalance=1.0, clip_frames=None, audio_checkpoint=False,
                total_steps=400)
    assert args.warmup_steps == 20 and "5%" in sources["warmup_steps"]
    assert sources["lr_decay_gamma"].startswith("unused")

    multi = namespace()
    sources = fill_recipe(multi, FLAGS)
    derive_auto(multi, sources, multi_label=True, imbalance=50.0, clip_frames=2000, audio_checkpoint=True)
    assert (multi.loss, multi.max_length, multi.balanced_sampling, multi.learning_rate) == ("bce", 1024, True, 1e-5)


def test_label_imbalance_counts_labels_that_occur():
    targets = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.float)
    assert label_imbalance(targets) == 4.0  # 4 vs 1; the absent third label is not counted


def test_auto_schedule_keeps_the_rate_within_2x_for_half_the_run():
    args = namespace()
    sources = fill_recipe(args, FLAGS)
    derive_auto(args, sources, multi_label=False, imbalance=1.0, clip_frames=98, audio_checkpoint=False,
                total_steps=300)
    factors = schedule_factors(args, 300, 30)
    assert factors[args.warmup_steps] == pytest.approx(1.0)
    assert min(factors[args.warmup_steps: 150]) >= 0.5
    assert factors[-1] < 0.01  # and it does decay over the run


# -- contradictions -------------------------------------------------------------------------------


def checked(args, sources, multi_label=False, total_steps=100, steps_per_epoch=25):
    with pytest.raises(ValueError) as error:
        check_contradictions(args, sources, multi_label=multi_label, total_steps=total_steps,
                             steps_per_epoch=steps_per_epoch)
    return str(error.value)


def test_the_audioset_preset_on_a_short_run_stops_with_the_fixes_named():
    args = namespace("audioset", max_length=98, num_train_epochs=4)
    sources = fill_recipe(args, FLAGS)
    message = checked(args, sources)
    assert "--warmup_steps 1000 (recipe audioset)" in message and "shorter than the run's 100" in message
    assert "--time_mask 192 (recipe audioset) can mask the whole 98-frame input" in message


def test_fast_decay_mask_and_loss_contradictions_are_named():
    args = namespace("esc50", max_length=512, lr_decay_start_epoch=0, lr_decay_gamma=0.1, freq_mask=128, loss="ce")
    sources = fill_recipe(args, FLAGS)
    message = checked(args, sources, multi_label=True, total_steps=100, steps_per_epoch=10)
    assert "under 1% of its base at step" in message and "--lr_decay_start_epoch" in message
    assert "--freq_mask 128 (flag) can mask all 128 mel bins" in message
    assert "--loss ce (flag)" in message and "pass --loss bce" in message

    single = namespace(loss="bce", max_length=98)
    sources = fill_recipe(single, FLAGS)
    derive_auto(single, sources, multi_label=False, imbalance=1.0, clip_frames=None, audio_checkpoint=False,
                total_steps=100)
    assert "pass --loss ce" in checked(single, sources)


def test_the_speechcommands_preset_keeps_its_bce_on_single_label_data():
    args = namespace("speechcommands", num_train_epochs=30)
    sources = fill_recipe(args, FLAGS)
    check_contradictions(args, sources, multi_label=False, total_steps=3000, steps_per_epoch=100)  # no error


# -- the script --------------------------------------------------------------------------------------


def test_help_shows_defaults():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "run_audioset.py"), "--help"],
                          capture_output=True, text=True, check=True)
    assert "(default: auto)" in done.stdout and "(default: 0.01)" in done.stdout  # --recipe, --max_bad_fraction
