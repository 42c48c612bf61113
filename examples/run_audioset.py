"""Train or fine-tune an Audio Spectrogram Transformer with Accelerate on a Hugging Face dataset.

On your own data, name the data, the starting checkpoint and the output; the `auto` recipe (the
default) derives the rest from the data and the run, and logs where every value came from:

    accelerate launch examples/run_audioset.py --dataset_name my_audiofolder \\
        --model_name_or_path facebook/deit-base-distilled-patch16-384 --output_dir my-ast

The paper's recipes (`--recipe audioset | audioset-balanced | esc50 | speechcommands`) set the
reference implementation's hyperparameters for its datasets; every value can be overridden by its
own flag:

    accelerate launch examples/run_audioset.py \\
        --dataset_name agkphysics/AudioSet --dataset_config_name balanced \\
        --label_list class_labels_indices.csv --recipe audioset-balanced \\
        --model_name_or_path facebook/deit-base-distilled-patch16-384 --output_dir ast-audioset-balanced

`python examples/run_audioset.py ...` works too (one process); `accelerate launch --multi_gpu
--num_processes 2 ...` on a machine without GPUs forms one CPU (gloo) group. Read top to bottom: arguments,
Accelerator, data, labels, model, features and augmentation, optimiser and schedule, resume,
training loop with evaluation, saving and pushing.
"""

import argparse
import io
import json
import math
import os
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from datasets import Audio, ClassLabel, load_dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import hf_ast  # noqa: F401  (registers the Auto classes)
from hf_ast import HfAstConfig, HfAstFeatureExtractor, HfAstForAudioClassification
from hf_ast.training.averaging import ensemble_predictions
from hf_ast.labels import RowTargets, check_label_order, infer_label_list, multi_hot, read_label_list
from hf_ast.training.metrics import load_audio_classification_metric
from hf_ast.training.recipes import (
    AUTO,
    RECIPES,
    check_contradictions,
    derive_auto,
    derive_auto_warmup,
    fill_recipe,
    label_imbalance,
    step_decay_factor,
    warmup_factor,
)
from hf_ast.training.sampling import DistributedWeightedSampler, balanced_sample_weights
from hf_ast.training.streaming import ShardCollator, StreamShard, stream_column_names
from hf_ast.training import (
    AudioCollator,
    atomic_save_state,
    decode_audio,
    latest_checkpoint,
    load_checkpoint,
    plot_history,
    write_model_card,
)

logger = get_logger(__name__)

AUDIO_MODEL_TYPES = ("hf_ast", "audio-spectrogram-transformer")
NORM_STATS_CLIPS = 1000  # auto measures the fbank mean/std on a random sample of this many training clips

# Flags a recipe fills when the user leaves them unset (None); training_args.json says where each came from.
RECIPE_FLAGS = (
    "learning_rate", "per_device_train_batch_size", "num_train_epochs", "optimizer", "weight_decay", "adam_beta1",
    "adam_beta2", "lr_scheduler_type", "lr_decay_start_epoch", "lr_decay_every", "lr_decay_gamma", "warmup_steps",
    "loss", "freq_mask", "time_mask", "mask_value", "mixup", "balanced_sampling", "weight_averaging_start_epoch", "noise",
    "channel_reduction", "max_length", "norm_mean", "norm_std",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train an Audio Spectrogram Transformer with Accelerate.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", required=True, help="Hub id (agkphysics/AudioSet, ashraq/esc50) or a local "
                      "folder (audiofolder, parquet, ...).")
    data.add_argument("--dataset_config_name", default=None, help="dataset configuration, e.g. 'balanced'")
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default=None, help="defaults to the first of test/validation/eval present")
    data.add_argument("--validation_fraction", type=float, default=None,
                      help="hold out this fraction of the training split when there is no eval split")
    data.add_argument("--eval_fold", type=int, default=None,
                      help="cross-validation: hold out this value of --fold_column_name (ESC-50: 1-5)")
    data.add_argument("--fold_column_name", default="fold")
    data.add_argument("--audio_column_name", default="audio")
    data.add_argument("--label_column_name", default=None,
                      help="the label column; unset: 'label' or 'labels', whichever the data has")
    data.add_argument("--label_list", default=None,
                      help="AudioSet class_labels_indices.csv or a one-label-per-line file; inferred from data if unset")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--compute_norm_stats", action="store_true",
                      help="measure the training split's fbank mean/std (no augmentation, no padded frames)")
    data.add_argument("--norm_mean", type=float, default=None, help="fbank mean for normalisation")
    data.add_argument("--norm_std", type=float, default=None, help="fbank std for normalisation")
    data.add_argument("--max_bad_fraction", type=float, default=0.01,
                      help="abort when more than this fraction of clips could not be decoded")
    data.add_argument("--preprocessing_num_workers", type=int, default=0, help="DataLoader workers")
    data.add_argument("--streaming", action="store_true",
                      help="read the splits as IterableDatasets (sets that do not fit on disk); needs --max_train_steps")
    data.add_argument("--shuffle_buffer_size", type=int, default=1000,
                      help="streaming: examples in the shuffle buffer (0 = stream order)")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default="facebook/deit-base-distilled-patch16-384",
                       help="hf-ast or transformers AST checkpoint (re-gridded), or an image DeiT/ViT/timm checkpoint")
    model.add_argument("--channel_reduction", choices=["mean", "sum"], default=None)
    model.add_argument("--max_length", type=int, default=None, help="input frames (1024 = 10.24 s)")
    model.add_argument("--num_mel_bins", type=int, default=128)
    model.add_argument("--fstride", type=int, default=10)
    model.add_argument("--tstride", type=int, default=10)
    model.add_argument("--new_head", action="store_true",
                       help="give the checkpoint a new head when its labels differ from the data's")
    model.add_argument("--padding", choices=["max_length", "longest"], default="max_length",
                       help="max_length: every clip padded to --max_length frames, padding attended to (the "
                            "reference); longest: padding-free masked batches, each clip's own tokens only (cheaper "
                            "on short clips). The saved model and extractor serve the way it trained.")
    model.add_argument("--gradient_checkpointing", action="store_true")
    model.add_argument("--freeze_encoder_layers", type=int, default=0, help="freeze embeddings and the first N layers")
    model.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])

    recipe = parser.add_argument_group(
        "recipe", "Flags left unset (None) come from --recipe: 'auto' derives them from the data and the run (see the "
        "README); the presets are the reference's settings for the paper's datasets.")
    recipe.add_argument("--recipe", choices=[AUTO, *sorted(RECIPES), "none"], default=AUTO,
                        help="'none' is an old name of 'auto'")
    recipe.add_argument("--learning_rate", type=float, default=None)
    recipe.add_argument("--per_device_train_batch_size", type=int, default=None)
    recipe.add_argument("--per_device_eval_batch_size", type=int, default=None, help="unset: the training batch size")
    recipe.add_argument("--num_train_epochs", type=int, default=None)
    recipe.add_argument("--gradient_accumulation_steps", type=int, default=1)
    recipe.add_argument("--optimizer", choices=["adam", "adamw"], default=None,
                        help="adam (the reference, L2 weight decay) or adamw (decoupled weight decay)")
    recipe.add_argument("--lr_scheduler_type", default=None,
                        help="'step' (the reference: warm-up then per-epoch decay) or any transformers scheduler "
                             "('cosine', 'linear', 'constant_with_warmup', ...)")
    recipe.add_argument("--lr_decay_start_epoch", type=int, default=None, help="step schedule only")
    recipe.add_argument("--lr_decay_every", type=int, default=None, help="step schedule only")
    recipe.add_argument("--lr_decay_gamma", type=float, default=None, help="step schedule only")
    recipe.add_argument("--warmup_steps", type=int, default=None, help="linear warm-up, in optimizer steps")
    recipe.add_argument("--weight_decay", type=float, default=None)
    recipe.add_argument("--adam_beta1", type=float, default=None)
    recipe.add_argument("--adam_beta2", type=float, default=None)
    recipe.add_argument("--loss", choices=["bce", "ce"], default=None,
                        help="bce (sigmoid per label) or ce (softmax); the data decides whether the model is "
                             "multi-label")
    recipe.add_argument("--freq_mask", type=int, default=None, help="SpecAugment frequency mask width (0 = off)")
    recipe.add_argument("--time_mask", type=int, default=None, help="SpecAugment time mask width (0 = off)")
    recipe.add_argument("--mask_value", choices=["mean", "reference"], default=None,
                        help="what SpecAugment writes: 'mean' (the data's mean, as SpecAugment does) or 'reference' "
                             "(log-mel 0 before normalisation, as the reference code: a loud band on quiet data)")
    recipe.add_argument("--mixup", type=float, default=None, help="fraction of training samples mixed up")
    recipe.add_argument("--noise", action=argparse.BooleanOptionalAction, default=None,
                        help="Speech Commands noise + time roll augmentation")
    recipe.add_argument("--balanced_sampling", action=argparse.BooleanOptionalAction, default=None)
    recipe.add_argument("--weight_averaging_start_epoch", type=int, default=None,
                        help="average the epoch weights from this (1-based) epoch on; 0 = off")

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--checkpointing_steps", default="epoch",
                     help="'epoch', a positive number of optimizer steps, or 'none'")
    run.add_argument("--checkpoints_total_limit", type=int, default=2, help="checkpoints to keep; 0 keeps all")
    run.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    run.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                     help="autocast precision; default: what `accelerate launch`/`accelerate config` set")
    run.add_argument("--with_tracking", action="store_true", help="log metrics to --report_to (in --output_dir)")
    run.add_argument("--report_to", default="tensorboard")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_private_repo", action=argparse.BooleanOptionalAction, default=None,
                     help="create the repo private (unset: the Hub's default, public unless your organisation's "
                          "is private); an existing repo keeps its visibility")
    run.add_argument("--hub_token", default=None,
                     help="discouraged: a token on the command line shows in the process list and shell history. "
                          "Log in with `hf auth login` or set HF_TOKEN instead; either way it is never logged, "
                          "saved or pushed")
    run.add_argument("--max_train_steps", type=int, default=None, help="stop after this many optimizer steps")
    args = parser.parse_args(argv)

    # Fill unset flags from the recipe; `auto` derives the rest from the data in main(). Every flag's origin
    # ("flag", "recipe NAME", "auto: why") goes to the log and to training_args.json.
    if args.recipe == "none":
        args.recipe = AUTO
    args.hyperparameter_sources = fill_recipe(args, RECIPE_FLAGS)
    if args.per_device_eval_batch_size is None:
        args.per_device_eval_batch_size = args.per_device_train_batch_size
    if args.weight_averaging_start_epoch == 0:
        args.weight_averaging_start_epoch = None
    if args.eval_fold is not None and args.validation_fraction is not None:
        parser.error("--eval_fold and --validation_fraction both choose the eval set; pass one")
    if args.validation_fraction is not None and not 0 < args.validation_fraction < 1:
        parser.error(f"--validation_fraction {args.validation_fraction} must lie in (0, 1)")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (namespace/name)")
    if args.checkpointing_steps not in ("epoch", "none") and not (
            args.checkpointing_steps.isdigit() and int(args.checkpointing_steps) > 0):
        parser.error(f"--checkpointing_steps {args.checkpointing_steps!r}: use 'epoch', 'none' or a positive "
                     "number of steps")
    if args.checkpoints_total_limit < 0:
        parser.error(f"--checkpoints_total_limit {args.checkpoints_total_limit}: pass how many checkpoints to keep "
                     "(0 keeps all)")
    if not 0 <= args.max_bad_fraction <= 1:
        parser.error(f"--max_bad_fraction {args.max_bad_fraction} must lie in [0, 1]")
    if args.streaming:
        # Options that need the whole split up front, or more than one reader of the stream.
        if args.balanced_sampling:
            parser.error("--streaming cannot draw a balanced sample (it needs every clip's labels up front; the "
                         f"{args.recipe!r} recipe turns it on): pass --no-balanced_sampling, or drop --streaming")
        if args.validation_fraction is not None:
            parser.error("--streaming cannot hold out a random --validation_fraction of a stream: pass --eval_split "
                         "or --eval_fold, or drop --streaming")
        if not args.max_train_steps:
            parser.error("--streaming needs --max_train_steps (a stream's length is not known up front; it sets "
                         "the schedule and the progress bar)")
        if args.preprocessing_num_workers > 1:
            parser.error("--streaming reads the stream in one place to keep its position for resuming: use "
                         "--preprocessing_num_workers 0 or 1")
        if args.compute_norm_stats and not args.max_train_samples:
            parser.error("--compute_norm_stats reads the whole training split; in streaming mode add "
                         "--max_train_samples N to measure on the first N clips, or pass --norm_mean/--norm_std")
    return args


def main(argv=None):
    args = parse_args(argv)
    # A credential: kept out of `args`, which is logged, saved (training_args.json), tracked and pushed.
    hub_token, args.hub_token = args.hub_token, None

    # --- Accelerator and logging --------------------------------------------------------------
    # `accelerate launch --multi_gpu --num_processes N` on a machine without GPUs: one CPU (gloo) group, which
    # Accelerate forms only when told ACCELERATE_USE_CPU=true; without it each process would train alone.
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        cpu=launched > 1 and not has_accelerator_device(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # Shuffling seeded by (seed, epoch): a resumed run sees the same order as an uninterrupted one.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
    )
    # Other processes log warnings too: a skipped clip is reported by the process that met it.
    logging_level = "INFO" if accelerator.is_local_main_process else "WARNING"
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging_level)
    datasets.utils.logging.set_verbosity_warning() if accelerator.is_local_main_process else None
    transformers.utils.logging.set_verbosity_warning() if accelerator.is_local_main_process else None
    if accelerator.num_processes == 1 and launched > 1:
        # `accelerate launch --multi_gpu` without GPUs starts processes that each train alone on all the data.
        raise RuntimeError(
            f"{launched} processes were launched but each runs alone ({accelerator.distributed_type}): they would "
            "all train on the whole dataset and overwrite each other's output. Without GPUs, set "
            "ACCELERATE_USE_CPU=true (one gloo group) before `accelerate launch --multi_gpu --num_processes N`."
        )
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded and args.weight_averaging_start_epoch:
        raise ValueError(
            f"--weight_averaging_start_epoch keeps a full copy of the weights on every process, which "
            f"{accelerator.distributed_type} avoids: pass --weight_averaging_start_epoch 0 (and average finished "
            "models with hf-ast-soup) or train with DDP"
        )
    logger.info(f"{accelerator.num_processes} process(es) ({accelerator.distributed_type}), "
                f"main process on {accelerator.device}, mixed precision {accelerator.mixed_precision}")
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # --- Data ----------------------------------------------------------------------------------
    raw = load_dataset(args.dataset_name, args.dataset_config_name, streaming=args.streaming)
    if args.train_split not in raw:
        raise ValueError(f"no split {args.train_split!r} in {args.dataset_name}; splits: {sorted(raw)}")
    train_set = raw[args.train_split]
    column_names = stream_column_names(train_set) if args.streaming else train_set.column_names
    if args.label_column_name is None:  # an audiofolder names it "label", AudioSet "labels"
        found = [name for name in ("label", "labels") if name in column_names]
        if len(found) != 1:
            raise ValueError(f"cannot tell the label column of {args.dataset_name} (columns: {column_names}): pass "
                             "--label_column_name")
        args.label_column_name = found[0]
        args.hyperparameter_sources["label_column_name"] = f"auto: the data's {found[0]!r} column"
    for column in (args.audio_column_name, args.label_column_name):
        if column not in column_names:
            raise ValueError(
                f"column {column!r} not in {args.dataset_name}; available columns: {column_names}. "
                "Pass --audio_column_name / --label_column_name."
            )
    if args.streaming:
        train_set, eval_set = stream_splits(raw, train_set, column_names, args)
    elif args.eval_fold is not None:
        if args.fold_column_name not in train_set.column_names:
            raise ValueError(f"--eval_fold needs a {args.fold_column_name!r} column; columns: {train_set.column_names}")
        folds = train_set[args.fold_column_name]
        eval_set = train_set.select([i for i, f in enumerate(folds) if f == args.eval_fold])
        train_set = train_set.select([i for i, f in enumerate(folds) if f != args.eval_fold])
        if len(eval_set) == 0:
            raise ValueError(f"--eval_fold {args.eval_fold}: no example has it; folds present: {sorted(set(folds))}")
    elif args.validation_fraction is not None:
        split = train_set.train_test_split(test_size=args.validation_fraction, seed=args.seed)
        train_set, eval_set = split["train"], split["test"]
    else:
        eval_set = raw[eval_split_name(raw, args)]
    if args.max_train_samples and not args.streaming:
        train_set = train_set.select(range(min(args.max_train_samples, len(train_set))))
    if args.max_eval_samples and not args.streaming:
        eval_set = eval_set.select(range(min(args.max_eval_samples, len(eval_set))))
    # The collator decodes (torchcodec, resampled to 16 kHz, down-mixed) so a corrupt file is skipped, not fatal.
    train_set = train_set.cast_column(args.audio_column_name, Audio(decode=False))
    eval_set = eval_set.cast_column(args.audio_column_name, Audio(decode=False))

    # --- Labels -------------------------------------------------------------------------------
    label_feature = (train_set.features or {}).get(args.label_column_name)
    names = getattr(label_feature, "names", None) or getattr(getattr(label_feature, "feature", None), "names", None)
    multi_label_data = label_feature is not None and not isinstance(label_feature, (ClassLabel, datasets.Value))
    if args.label_list:  # AudioSet: data carries mids (/m/09x0r), the model shows display names (Speech)
        labels, display_names = read_label_list(args.label_list)
    elif args.streaming:
        if names is None:
            raise ValueError("--streaming cannot infer the label list without reading the whole split: pass "
                             "--label_list (AudioSet: class_labels_indices.csv; or one label per line)")
        labels = display_names = list(names)
    else:
        labels = display_names = [str(label) for label in infer_label_list(train_set, args.label_column_name)]
    label2id = {label: index for index, label in enumerate(labels)}
    # The data decides what the model is (its scores, metric and saved problem type); --loss only how it trains.
    multi_label = multi_label_data
    problem_type = "multi_label_classification" if multi_label else "single_label_classification"

    def to_names(value):
        # ClassLabel ints -> names; everything -> str, so ids from a label file and the data agree.
        def name(label):
            return names[label] if names is not None else str(label)

        return [name(label) for label in value] if isinstance(value, list) else name(value)

    if args.streaming:  # targets computed batch by batch; labels checked as the stream is read
        train_targets = eval_targets = RowTargets(args.label_column_name, label2id, to_names)
        logger.info(f"streaming {args.dataset_name}: {len(labels)} labels ({problem_type})")
    else:
        train_targets = multi_hot([to_names(value) for value in train_set[args.label_column_name]], label2id)
        eval_targets = multi_hot([to_names(value) for value in eval_set[args.label_column_name]], label2id)
        logger.info(f"{len(train_set)} training / {len(eval_set)} eval clips, {len(labels)} labels ({problem_type})")
    if args.recipe == AUTO:  # everything but the warm-up, which needs the run's length
        derive_auto(args, args.hyperparameter_sources, multi_label=multi_label,
                    imbalance=1.0 if args.streaming else label_imbalance(train_targets),
                    clip_frames=None if args.max_length else longest_clip_frames(train_set, args),
                    audio_checkpoint=checkpoint_model_type(args.model_name_or_path) in AUDIO_MODEL_TYPES)
        if args.norm_mean is None and args.norm_std is None and not args.streaming:
            args.compute_norm_stats = True
            args.hyperparameter_sources["norm_mean"] = args.hyperparameter_sources["norm_std"] = (
                "auto: measured on the training split (--compute_norm_stats)")

    # --- Model ---------------------------------------------------------------------------------
    id2label = dict(enumerate(display_names))
    geometry = dict(max_length=args.max_length, num_mel_bins=args.num_mel_bins,
                    frequency_stride=args.fstride, time_stride=args.tstride)
    model = build_model(args, id2label, problem_type, geometry)
    # Saved with the model: a model trained padded ignores frame masks when served (see HfAstModel.forward).
    model.config.trained_padding = args.padding
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.freeze_encoder_layers:
        freeze(model, args.freeze_encoder_layers)

    # --- Features and augmentation -------------------------------------------------------------
    # A model trained padding-free is served padding-free: the saved extractor pads to the longest clip, with masks.
    extractor = HfAstFeatureExtractor(max_length=args.max_length, num_mel_bins=args.num_mel_bins, padding=args.padding,
                                      return_attention_mask=args.padding == "longest")
    if args.norm_mean is not None:
        extractor.mean = args.norm_mean
    if args.norm_std is not None:
        extractor.std = args.norm_std
    if args.compute_norm_stats:
        if args.streaming:
            stats_set = train_set.take(args.max_train_samples)
        else:  # a random sample: files are often sorted by class
            stats_set = train_set.shuffle(seed=args.seed).select(range(min(len(train_set), NORM_STATS_CLIPS)))
        extractor.mean, extractor.std = measure_norm_stats(stats_set, args, extractor, accelerator)
        args.norm_mean, args.norm_std = extractor.mean, extractor.std
        logger.info(f"training-split fbank statistics: mean {extractor.mean:.6f}, std {extractor.std:.6f}")
    train_collator = AudioCollator(
        extractor, args.audio_column_name, train_targets, train=True, mixup=args.mixup, freq_mask=args.freq_mask,
        time_mask=args.time_mask, noise=args.noise, seed=args.seed, padding=args.padding, mask_value=args.mask_value,
    )
    eval_collator = AudioCollator(extractor, args.audio_column_name, eval_targets, train=False, keep_bad_rows=True,
                                  padding=args.padding)

    sampler = None
    if args.streaming:
        # Every process reads the same stream and keeps its share of each global batch (hf_ast.training.streaming).
        shard = dict(num_processes=accelerator.num_processes, process_index=accelerator.process_index)
        train_shard = StreamShard(train_set, args.per_device_train_batch_size, check_row=train_targets.check, **shard)
        train_loader = DataLoader(train_shard, batch_size=None, collate_fn=ShardCollator(train_collator),
                                  num_workers=args.preprocessing_num_workers)
        eval_shard = StreamShard(eval_set, args.per_device_eval_batch_size, check_row=eval_targets.check, **shard)
        eval_loader = DataLoader(eval_shard, batch_size=None, collate_fn=ShardCollator(eval_collator))
    else:
        # `_index` is each row's position in the targets tensor (and keys its augmentation randomness).
        train_set = train_set.add_column("_index", list(range(len(train_set))))
        eval_set = eval_set.add_column("_index", list(range(len(eval_set))))
        if args.balanced_sampling:
            weights = balanced_sample_weights(train_targets.numpy())
            # Every process makes the same draw; accelerator.prepare deals its batches out (num_replicas=1, or
            # the data would be split twice), so gradient accumulation sees the end of each epoch as usual.
            sampler = DistributedWeightedSampler(weights, num_replicas=1, rank=0, seed=args.seed)
            train_loader = DataLoader(train_set, batch_size=args.per_device_train_batch_size, sampler=sampler,
                                      collate_fn=train_collator, num_workers=args.preprocessing_num_workers)
        else:
            train_loader = DataLoader(train_set, batch_size=args.per_device_train_batch_size, shuffle=True,
                                      collate_fn=train_collator, num_workers=args.preprocessing_num_workers)
        eval_loader = DataLoader(eval_set, batch_size=args.per_device_eval_batch_size, collate_fn=eval_collator,
                                 num_workers=args.preprocessing_num_workers)

    # --- Optimiser and schedule -----------------------------------------------------------------
    optimizer_class = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
        weight_decay=args.weight_decay, betas=(args.adam_beta1, args.adam_beta2),
    )
    history_state = TrainingHistory()
    if args.streaming:  # the shards already split the data: Accelerate must not split it again
        model, optimizer = accelerator.prepare(model, optimizer)
        steps_per_epoch, total_steps = None, args.max_train_steps
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
        steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
        total_steps = args.num_train_epochs * steps_per_epoch
        if args.max_train_steps:
            total_steps = min(total_steps, args.max_train_steps)
    if args.recipe == AUTO:
        derive_auto_warmup(args, args.hyperparameter_sources, total_steps)
    check_contradictions(args, args.hyperparameter_sources, multi_label=multi_label, total_steps=total_steps,
                         steps_per_epoch=steps_per_epoch)
    record_hyperparameters(args, output_dir, accelerator)
    if args.lr_scheduler_type == "step":
        def lr_lambda(step):
            # A stream's epoch length is unknown: its decay follows the epoch being read.
            epoch = step // steps_per_epoch + 1 if steps_per_epoch else history_state.epoch + 1
            return warmup_factor(step, args.warmup_steps) * step_decay_factor(
                epoch, args.lr_decay_start_epoch, args.lr_decay_every, args.lr_decay_gamma)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    else:
        scheduler = transformers.get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                                               num_training_steps=total_steps)
    # Checkpointed beside Accelerate's state as JSON and safetensors, not registered with
    # accelerator.register_for_checkpointing: load_state unpickles registered objects in full, so a
    # crafted checkpoint could run code. The scheduler steps once per optimizer step on every process
    # (not prepared: no step scaling). The sampler is not checkpointed: its per-epoch draw is
    # deterministic, and skip_first_batches below skips what was consumed. A stream's position
    # travels in history_state.
    checkpoint_states = {"hf_ast_scheduler": scheduler, "hf_ast_history": history_state}
    if args.with_tracking:
        accelerator.init_trackers("hf_ast", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    # --- Resume ---------------------------------------------------------------------------------
    completed_steps, start_epoch, resume_batches, resume_stream, resume_within_epoch = 0, 0, 0, None, False
    if args.resume_from_checkpoint:
        path = latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
        if path is None:
            logger.info("no complete checkpoint found: starting from scratch")
        else:
            load_checkpoint(accelerator, path, checkpoint_states)
            completed_steps = history_state.completed_steps
            start_epoch = history_state.epoch
            if len(history_state.records) > start_epoch:  # saved after that epoch's evaluation
                start_epoch += 1
            else:
                # Saved during the epoch, or after its last step but before its evaluation (which still runs):
                # go on from there, with the epoch's loss so far from history_state.
                resume_within_epoch = True
                if args.streaming:
                    resume_stream = history_state.stream_state
                else:
                    resume_batches = (completed_steps - start_epoch * steps_per_epoch) * args.gradient_accumulation_steps
            logger.info(f"resumed from {path}: step {completed_steps}, epoch {start_epoch + 1}")

    # --- Training --------------------------------------------------------------------------------
    metric_name = "mAP" if multi_label else "accuracy"
    progress = tqdm(range(total_steps), initial=completed_steps, disable=not accelerator.is_local_main_process,
                    desc="training")
    for epoch in range(start_epoch, args.num_train_epochs):
        model.train()
        history_state.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_collator.set_epoch(epoch)
        loader, skipped = train_loader, 0
        if args.streaming:  # shuffle seeded by (seed, epoch); a resume continues from the saved stream position
            train_shard.set_epoch(epoch, resume=resume_stream)
            resume_stream = None
            if args.lr_scheduler_type == "step":
                # The lr of this epoch's first step was set before the stream told us the last epoch had ended.
                for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
                    group["lr"] = base_lr * lr_lambda(scheduler.last_epoch)
        elif resume_batches:
            # A checkpoint taken after the epoch's last step leaves nothing to read: on to its evaluation.
            skipped = min(resume_batches, len(train_loader))
            loader = accelerator.skip_first_batches(train_loader, skipped) if skipped < len(train_loader) else []
            resume_batches = 0
        if completed_steps >= total_steps:  # resumed from the run's last step: evaluate, train no further
            loader = []
        if hasattr(loader, "set_epoch"):  # the shuffle of epoch e is seeded by (seed, e), also after a resume
            loader.set_epoch(epoch)
        if not resume_within_epoch:  # a resumed epoch keeps the loss and lr of its steps before the checkpoint
            history_state.epoch_loss, history_state.epoch_batches = 0.0, 0
            history_state.step_lr = optimizer.param_groups[0]["lr"]
        resume_within_epoch = False
        step_lr = history_state.step_lr
        # The most clips the run can have read by this epoch's bad-fraction check: once more of them are bad
        # than --max_bad_fraction allows of that, the check will fail, so stop now, not after an epoch of
        # placeholder batches.
        batches_left = (total_steps - completed_steps) * args.gradient_accumulation_steps
        if not args.streaming:
            batches_left = min(batches_left, len(train_loader) - skipped)
        clips_bound = history_state.seen_clips + batches_left * args.per_device_train_batch_size * accelerator.num_processes
        for batch in loader:
            with accelerator.accumulate(model):
                logits = model(input_values=batch["input_values"].to(accelerator.device),
                               attention_mask=batch["attention_mask"].to(accelerator.device)).logits
                # Every process runs the same number of steps even when clips were skipped.
                loss = training_loss(logits, batch["labels"].to(accelerator.device), args.loss)
                loss = loss * batch["valid"].to(accelerator.device).any()
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            # Summed over processes as it happens: every process, and so every checkpoint, holds the totals
            # (the epoch's loss too, so a run resumed mid-epoch reports the loss over all of its batches).
            totals = accelerator.reduce(torch.cat([
                torch.tensor([batch["num_bad"], batch["num_clips"], 1], dtype=torch.float64, device=accelerator.device),
                loss.detach().double().reshape(1)])).tolist()
            history_state.bad_clips += int(totals[0])
            history_state.seen_clips += int(totals[1])
            history_state.epoch_batches += int(totals[2])
            history_state.epoch_loss += totals[3]
            check_bad_fraction(history_state.bad_clips, history_state.seen_clips, args.max_bad_fraction, clips_bound)
            if args.streaming:
                history_state.stream_state = batch["stream_state"]
            if accelerator.sync_gradients:
                history_state.step_lr = step_lr = optimizer.param_groups[0]["lr"]  # the lr this step used
                scheduler.step()
                completed_steps += 1
                history_state.completed_steps = completed_steps
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{step_lr:.2e}")
                if args.with_tracking:
                    accelerator.log({"train/loss": loss.item(), "train/lr": step_lr}, step=completed_steps)
                if args.checkpointing_steps.isdigit() and completed_steps % int(args.checkpointing_steps) == 0:
                    atomic_save_state(accelerator, output_dir, f"step_{completed_steps}", completed_steps,
                                      args.checkpoints_total_limit, checkpoint_states)
            if completed_steps >= total_steps:
                break
        check_bad_fraction(history_state.bad_clips, history_state.seen_clips, args.max_bad_fraction)

        # --- Evaluation -------------------------------------------------------------------------
        scores, references, eval_bad = predict(model, eval_loader, accelerator, multi_label)
        check_eval_clips(len(scores), eval_bad, args.max_bad_fraction)
        results = compute_metrics(scores, references, multi_label)
        mean_loss = history_state.epoch_loss / max(1, history_state.epoch_batches)
        record = {"epoch": epoch + 1, "step": completed_steps, "train_loss": mean_loss,
                  "lr": history_state.step_lr, **results, "bad_eval_clips": eval_bad}
        unwrapped = accelerator.unwrap_model(model)
        history_state.epoch_scores.append(scores)
        if args.weight_averaging_start_epoch and epoch + 1 >= args.weight_averaging_start_epoch:
            state = {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()}
            history_state.add_to_average(state)
            record["ensemble"] = compute_metrics(
                ensemble_predictions(history_state.epoch_scores[args.weight_averaging_start_epoch - 1:]),
                references, multi_label)
        history_state.records.append(record)
        logger.info(f"epoch {epoch + 1}: {json.dumps(record)}")
        if args.with_tracking:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=completed_steps)
        if accelerator.is_main_process:
            (output_dir / f"epoch_{epoch + 1}_results.json").write_text(json.dumps(record, indent=2))
        if args.checkpointing_steps == "epoch":
            atomic_save_state(accelerator, output_dir, f"epoch_{epoch + 1}", completed_steps, args.checkpoints_total_limit,
                              checkpoint_states)
        if args.push_to_hub:
            save_and_push(accelerator, model, extractor, output_dir, args, history_state, final=False,
                          hub_token=hub_token)
        if completed_steps >= total_steps:
            break
    progress.close()

    # --- Weight averaging, saving and pushing ------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    final = {"final": history_state.records[-1] if history_state.records else {}}
    if history_state.average_count:
        averaged_dir = output_dir / "averaged"
        averaged = HfAstForAudioClassification(unwrapped.config)
        averaged.load_state_dict(history_state.averaged_state_dict())
        averaged_model = accelerator.prepare_model(averaged, evaluation_mode=True)
        scores, references, _ = predict(averaged_model, eval_loader, accelerator, multi_label)
        final["weight_averaged"] = compute_metrics(scores, references, multi_label)
        final["weight_averaged"]["epochs"] = history_state.average_count
        if accelerator.is_main_process:
            averaged.save_pretrained(averaged_dir)
            extractor.save_pretrained(averaged_dir)
        logger.info(f"weight-averaged model over {history_state.average_count} epochs: {final['weight_averaged']}")
    final["bad_clips_skipped"] = history_state.bad_clips
    final["bad_eval_clips_skipped"] = history_state.records[-1]["bad_eval_clips"] if history_state.records else 0
    save_and_push(accelerator, model, extractor, output_dir, args, history_state, final=True, results=final,
                  hub_token=hub_token)
    if args.with_tracking:
        accelerator.end_training()
    logger.info(f"final {metric_name}: {final['final'].get(metric_name)}; results in {output_dir / 'all_results.json'}")
    return final


# =============================================================================================
# Helpers specific to this script (reusable pieces live in hf_ast.training and friends)
# =============================================================================================


class TrainingHistory:
    """Per-epoch records, running weight average and skip counters, saved in every checkpoint.

    Its `state_dict()` holds JSON values, numpy arrays (`epoch_scores`) and tensors (the weight
    sum): `atomic_save_state` stores it as JSON and safetensors, never as a pickle.
    """

    def __init__(self):
        self.records, self.epoch_scores, self.completed_steps, self.bad_clips, self.seen_clips = [], [], 0, 0, 0
        self.average_count, self._sum = 0, None
        self.epoch, self.stream_state = 0, None  # streaming: the epoch being read and the position in it
        # The epoch so far (summed over processes): loss over its batches, and the lr of its last step.
        self.epoch_loss, self.epoch_batches, self.step_lr = 0.0, 0, None

    def add_to_average(self, state_dict):
        if self._sum is None:
            self._sum = {k: v.double() if v.is_floating_point() else v for k, v in state_dict.items()}
        else:
            for k, v in state_dict.items():
                if v.is_floating_point():
                    self._sum[k] += v.double()
        self.average_count += 1

    def averaged_state_dict(self):
        return {k: (v / self.average_count).float() if v.is_floating_point() else v for k, v in self._sum.items()}

    def state_dict(self):
        return {"records": self.records, "epoch_scores": self.epoch_scores, "completed_steps": self.completed_steps,
                "bad_clips": self.bad_clips, "seen_clips": self.seen_clips, "average_count": self.average_count,
                "sum": self._sum, "epoch": self.epoch, "stream_state": self.stream_state,
                "epoch_loss": self.epoch_loss, "epoch_batches": self.epoch_batches, "step_lr": self.step_lr}

    def load_state_dict(self, state):
        self.records, self.epoch_scores = state["records"], state["epoch_scores"]
        self.completed_steps, self.bad_clips, self.seen_clips = state["completed_steps"], state["bad_clips"], state[
            "seen_clips"]
        self.average_count, self._sum = state["average_count"], state["sum"]
        self.epoch, self.stream_state = state["epoch"], state["stream_state"]
        self.epoch_loss, self.epoch_batches, self.step_lr = state["epoch_loss"], state["epoch_batches"], state["step_lr"]


def has_accelerator_device() -> bool:
    """A GPU or other accelerator torch can use (torch >= 2.6 asks torch.accelerator; older ones only know CUDA)."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def training_loss(logits, targets, loss):
    """BCE over labels or cross-entropy, both on float targets (mixup makes them soft)."""
    logits = logits.float()
    if loss == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return torch.nn.functional.cross_entropy(logits, targets)


def record_hyperparameters(args, output_dir, accelerator):
    """Log every recipe value with its origin and write training_args.json (values and `hyperparameter_sources`)."""
    sources = args.hyperparameter_sources
    lines = [f"  {name} = {getattr(args, name)!r}  [{sources.get(name, 'default')}]"
             for name in sorted(set(RECIPE_FLAGS) | set(sources))]
    logger.info(f"hyperparameters (recipe {args.recipe}):\n" + "\n".join(lines), main_process_only=True)
    if accelerator.is_main_process:
        (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2, default=str))


def longest_clip_frames(dataset, args, num_clips=200) -> int | None:
    """Kaldi frames (25 ms / 10 ms at 16 kHz) of the longest of up to `num_clips` training clips, read from headers."""
    import soundfile

    sample = dataset.shuffle(seed=args.seed).select(range(min(len(dataset), num_clips))) if hasattr(
        dataset, "select") else dataset.take(num_clips)
    longest = 0
    for row in sample:
        value = row[args.audio_column_name]
        try:
            source = value.get("bytes") or value.get("path")
            info = soundfile.info(io.BytesIO(source) if isinstance(source, bytes) else source)
            seconds = info.frames / info.samplerate
        except Exception:  # not a libsndfile format (mp3, ...): decode it
            try:
                seconds = len(decode_audio(value, 16000)) / 16000
            except Exception:
                continue  # a corrupt clip; the collator reports it
        longest = max(longest, 1 + (int(seconds * 16000) - 400) // 160)
    return longest or None


def checkpoint_model_type(source) -> str | None:
    """`model_type` of a Hub id or folder (None for a weights file or an unreadable config)."""
    if str(source).endswith((".pth", ".pt", ".bin", ".safetensors")):
        return None
    try:
        return transformers.AutoConfig.from_pretrained(source, trust_remote_code=False).model_type
    except (OSError, ValueError):
        config = Path(source, "config.json")
        return json.loads(config.read_text()).get("model_type") if config.exists() else None


def eval_split_name(raw, args):
    names = [args.eval_split] if args.eval_split else ["test", "validation", "eval", "valid"]
    present = [name for name in names if name in raw]
    if not present:
        raise ValueError(
            f"no eval split among {names} in {args.dataset_name} (splits: {sorted(raw)}); pass --eval_split, "
            "--validation_fraction or --eval_fold"
        )
    return present[0]


def stream_splits(raw, train_set, column_names, args):
    """Streaming: the eval split or held-out fold, sample limits and the shuffle buffer, all lazy."""
    # Undecoded audio: filtering on the fold column must not decode every clip.
    train_set = train_set.cast_column(args.audio_column_name, Audio(decode=False))
    if args.eval_fold is not None:
        fold, held_out = args.fold_column_name, args.eval_fold
        if fold not in column_names:
            raise ValueError(f"--eval_fold needs a {fold!r} column; columns: {column_names}")
        eval_set = train_set.filter(lambda row: row[fold] == held_out)
        train_set = train_set.filter(lambda row: row[fold] != held_out)
    else:
        eval_set = raw[eval_split_name(raw, args)]
    if args.max_train_samples:
        train_set = train_set.take(args.max_train_samples)  # the first N of the stream, shuffled below
    if args.max_eval_samples:
        eval_set = eval_set.take(args.max_eval_samples)
    if args.shuffle_buffer_size:
        train_set = train_set.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
    return train_set, eval_set


def build_model(args, id2label, problem_type, geometry):
    """An hf-ast/transformers AST checkpoint is re-gridded; an image DeiT/ViT/timm checkpoint goes through from_deit."""
    source = args.model_name_or_path
    if checkpoint_model_type(source) in AUDIO_MODEL_TYPES:
        checkpoint = HfAstConfig.from_pretrained(source)
        known = {int(k): v for k, v in checkpoint.id2label.items()}
        generic = all(v == f"LABEL_{k}" for k, v in known.items())
        if not generic and known != id2label and not args.new_head:
            check_label_order(known, list(id2label.values()),
                              hint="Pass --new_head to train a new classification head on the data's labels.")
        model = HfAstForAudioClassification.from_pretrained_with_geometry(
            source, id2label=id2label, problem_type=problem_type, attn_implementation=args.attn_implementation,
            **geometry,
        )
    else:
        model = HfAstForAudioClassification.from_deit(
            source, channel_reduction=args.channel_reduction, id2label=id2label,
            label2id={v: k for k, v in id2label.items()}, problem_type=problem_type, **geometry,
        )
        model.set_attn_implementation(args.attn_implementation)
    model.config.problem_type = problem_type  # explicit: transformers' loss never infers it
    return model


def freeze(model, num_layers):
    """Freeze the embeddings and the first `num_layers` encoder layers (small-data fine-tuning)."""
    encoder = model.audio_spectrogram_transformer
    if num_layers > len(encoder.encoder.layer):
        raise ValueError(f"--freeze_encoder_layers {num_layers} > the model's {len(encoder.encoder.layer)} layers")
    for parameter in encoder.embeddings.parameters():
        parameter.requires_grad_(False)
    for layer in encoder.encoder.layer[:num_layers]:
        for parameter in layer.parameters():
            parameter.requires_grad_(False)


@torch.no_grad()
def predict(model, loader, accelerator, multi_label):
    """Scores (sigmoid or softmax) and targets of the eval set's decodable clips, gathered across processes,
    and the number of clips that could not be decoded."""
    model.eval()
    all_scores, all_targets, num_bad = [], [], 0
    for batch in loader:
        logits = model(input_values=batch["input_values"].to(accelerator.device),
                       attention_mask=batch["attention_mask"].to(accelerator.device)).logits
        scores = logits.float().sigmoid() if multi_label else logits.float().softmax(-1)
        # Bad clips are counted after gathering, where Accelerate has dropped the repeats that even out the last batch.
        scores, targets, valid, bad = accelerator.gather_for_metrics(
            (scores, batch["labels"].to(accelerator.device), batch["valid"].to(accelerator.device),
             batch["bad"].to(accelerator.device)))
        all_scores.append(scores[valid].cpu())  # undecodable clips were placeholders: not scored
        all_targets.append(targets[valid].cpu())
        num_bad += int(bad.sum())
    model.train()
    return torch.cat(all_scores).numpy(), torch.cat(all_targets).numpy(), num_bad


def compute_metrics(scores, targets, multi_label):
    metric = load_audio_classification_metric(multi_label=multi_label)
    references = targets if multi_label else targets.argmax(-1)
    return metric.compute(predictions=scores, references=references)


def check_bad_fraction(bad, seen, max_fraction, most=None, split="training"):
    """Raise once more than `max_fraction` of the clips are bad, or (with `most`, the most clips the next full
    check can count) once so many are bad that the full check will fail whatever the rest hold.

    `bad` is the total over processes, the same on each: they all raise together and none is left waiting.
    """
    if most is not None:  # part way: the fraction so far says little, a count certain to exceed it does
        if bad > max_fraction * most:
            raise RuntimeError(f"{bad} of the first {seen} {split} clips could not be decoded: more than "
                               f"--max_bad_fraction {max_fraction} of the at most {most} read by the next check, "
                               "whatever the rest hold. Check the dataset and that its format can be decoded "
                               "(torchcodec/FFmpeg, libsndfile)")
        return
    if seen and bad / seen > max_fraction:
        raise RuntimeError(f"{bad} of {seen} {split} clips could not be decoded (> --max_bad_fraction {max_fraction}); "
                           "check the dataset and that its format can be decoded (torchcodec/FFmpeg, libsndfile)")


def check_eval_clips(num_scored, num_bad, max_fraction):
    """Stop when no eval clip could be decoded; warn when more than --max_bad_fraction of them could not."""
    if not num_scored:
        raise RuntimeError(
            f"none of the {num_bad} eval clips could be decoded, so there is nothing to evaluate: check the eval "
            "split and that its format can be decoded (torchcodec/FFmpeg, libsndfile); the log names each clip"
            if num_bad else "the eval set is empty")
    if num_bad / (num_bad + num_scored) > max_fraction:
        logger.warning(f"{num_bad} of {num_bad + num_scored} eval clips could not be decoded (> --max_bad_fraction "
                       f"{max_fraction}): the metrics cover the other {num_scored}")


def measure_norm_stats(dataset, args, extractor, accelerator):
    """Mean and std of the training split's log-mel frames: no augmentation, padded frames excluded."""
    collator = AudioCollator(extractor, args.audio_column_name, None, train=False, normalize=False)
    if args.streaming:
        shard = StreamShard(dataset, args.per_device_eval_batch_size, accelerator.num_processes,
                            accelerator.process_index)
        loader = DataLoader(shard, batch_size=None, collate_fn=ShardCollator(collator))
    else:
        loader = accelerator.prepare_data_loader(
            DataLoader(dataset, batch_size=args.per_device_eval_batch_size, collate_fn=collator))
    total = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # count, sum, sum of squares
    # The stats pass reads the split before any training: stop it early on an undecodable one as well.
    most = args.max_train_samples if args.streaming else len(loader) * args.per_device_eval_batch_size * (
        accelerator.num_processes)
    bad = seen = 0
    for batch in tqdm(loader, desc="fbank statistics", disable=not accelerator.is_local_main_process):
        # Valid frames of real clips (a batch whose clips were all skipped is one placeholder row).
        mask = (batch["attention_mask"].bool() & batch["valid"][:, None]).to(accelerator.device)
        frames = batch["input_values"].to(accelerator.device)[mask].double()  # (valid frames, bins)
        total += torch.stack([torch.tensor(frames.numel(), device=frames.device, dtype=torch.float64),
                              frames.sum(), frames.square().sum()])
        counts = accelerator.reduce(torch.tensor([batch["num_bad"], batch["num_clips"]], device=accelerator.device))
        bad, seen = bad + int(counts[0]), seen + int(counts[1])
        check_bad_fraction(bad, seen, args.max_bad_fraction, most)
    check_bad_fraction(bad, seen, args.max_bad_fraction)
    count, first, second = accelerator.reduce(total, reduction="sum").tolist()
    if not count:
        raise RuntimeError(f"none of the {seen} training clips read for the fbank statistics could be decoded")
    mean = first / count
    return float(mean), float(math.sqrt(max(second / count - mean * mean, 0.0)))


def save_and_push(accelerator, model, extractor, output_dir, args, history, final, results=None, hub_token=None):
    """Model, extractor, results, curves and card into output_dir; upload it when asked (main process).

    `model` is the prepared model: every process takes part in gathering its full state dict
    (FSDP and DeepSpeed ZeRO-3 hold only shards), which the main process saves. `hub_token` None:
    huggingface_hub's own (HF_TOKEN, or the one `hf auth login` stored).
    """
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
        model.save_pretrained(output_dir, state_dict=state_dict)
        extractor.save_pretrained(output_dir)
        if results is not None:
            (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        if history.records:
            plot_history(history.records, output_dir / "training_curves.png")
        write_model_card(output_dir / "README.md", model.config, vars(args), history.records, results)
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=hub_token)
            api.create_repo(args.hub_model_id, exist_ok=True, private=args.hub_private_repo)
            api.upload_folder(
                repo_id=args.hub_model_id, folder_path=str(output_dir),
                commit_message="final model" if final else f"epoch {len(history.records)}",
                ignore_patterns=["checkpoints/**", "checkpoints_tmp/**", "runs/**"],
            )
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
