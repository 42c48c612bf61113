"""The library half of `examples/run_audioset.py`: the pieces its `main()` strings together.

The script reads as one story (arguments, Accelerator, data, model, optimiser, resume, the loop,
saving); what a reader need not follow line by line lives here, testable on its own:

- `build_accelerator`: Accelerate set up for one process, GPUs, or a CPU (gloo) group, with logging.
- `load_splits`, `resolve_labels`, `apply_auto_recipe`: the data, its labels, and what `auto` derives.
- `build_model`: from an image DeiT/ViT/timm checkpoint or a trained AST (re-gridded), `freeze`.
- `build_extractor`, `measure_norm_stats`: the run's feature extractor, with the training split's
  log-mel mean and std.
- `build_loaders`: map-style and streamed data behind one `Loaders` object (the only place that
  knows the difference), `build_scheduler`, and `resume`.
- `TrainingHistory`: records, skip counters and the running weight average, saved in checkpoints.
- `predict`, `compute_metrics`, `check_bad_fraction`, `check_eval_clips`: evaluation.
- `record_hyperparameters`, `save_and_push`: what a run writes and uploads.
"""

import io
import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType
from datasets import Audio, ClassLabel, load_dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..configuration_hf_ast import HfAstConfig, id2label_with_int_keys
from ..conversion.state_dicts import is_weights_file
from ..feature_extraction_hf_ast import AUDIOSET_MEAN, AUDIOSET_STD, HfAstFeatureExtractor, frame_geometry, num_frames
from ..labels import RowTargets, check_label_order, class_label_names, infer_label_list, multi_hot, read_label_list
from ..long_audio import scores_from_logits
from ..modeling_hf_ast import HfAstForAudioClassification
from .averaging import RunningAverage
from .checkpoints import latest_checkpoint, load_checkpoint
from .collator import AudioCollator, decode_audio
from .metrics import load_audio_classification_metric
from .recipes import (
    PATCHOUT_FIELDS,
    RECIPE_FLAGS,
    derive_auto,
    label_imbalance,
    set_auto,
    step_decay_factor,
    warmup_factor,
)
from .report import plot_history, write_model_card
from .sampling import SeededWeightedSampler, balanced_sample_weights
from .streaming import INDEX_KEY, ShardCollator, StreamShard, stream_column_names

logger = get_logger(__name__)

AUDIO_MODEL_TYPES = ("hf_ast", "audio-spectrogram-transformer")
NORM_STATS_CLIPS = 1000  # the fbank mean/std are measured on a random sample of this many training clips
CLIP_LENGTH_SAMPLE = 200  # auto's --max_length: the longest of this many training clips


# ---------------------------------------------------------------------------------------------
# Accelerator
# ---------------------------------------------------------------------------------------------


def has_accelerator_device() -> bool:
    """A GPU or other accelerator torch can use (torch >= 2.6 asks torch.accelerator; older ones only know CUDA)."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def build_accelerator(args) -> Accelerator:
    """The run's Accelerator, logging set up per process, and the launches that cannot work refused.

    `accelerate launch --multi_gpu --num_processes N` on a machine without GPUs: one CPU (gloo) group,
    which Accelerate forms only when told ACCELERATE_USE_CPU=true; without it each process would train alone.
    """
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
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level="INFO" if accelerator.is_local_main_process else "WARNING")
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
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
    return accelerator


# ---------------------------------------------------------------------------------------------
# Data, labels and the auto recipe
# ---------------------------------------------------------------------------------------------


def eval_split_name(raw, args) -> str:
    names = [args.eval_split] if args.eval_split else ["test", "validation", "eval", "valid"]
    present = [name for name in names if name in raw]
    if not present:
        raise ValueError(
            f"no eval split among {names} in {args.dataset_name} (splits: {sorted(raw)}); pass --eval_split, "
            "--validation_fraction or --eval_fold"
        )
    return present[0]


def load_splits(args):
    """The training and eval splits, audio left undecoded (the collator decodes, so a corrupt file is skipped).

    The eval set is the eval split, a held-out `--eval_fold`, or a `--validation_fraction` of the
    training split. Sets `args.label_column_name` when it was left to `auto`.
    """
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
            raise ValueError(
                f"--eval_fold needs a {args.fold_column_name!r} column; columns: {train_set.column_names}"
            )
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
    return (train_set.cast_column(args.audio_column_name, Audio(decode=False)),
            eval_set.cast_column(args.audio_column_name, Audio(decode=False)))


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


class Labels:
    """The run's labels: display names in class-id order, what the data is, and the targets of both splits."""

    def __init__(self, names, multi_label, train_targets, eval_targets):
        self.names = names
        self.multi_label = multi_label
        # The data decides what the model is (its scores, metric and saved problem type); --loss only how it trains.
        self.problem_type = "multi_label_classification" if multi_label else "single_label_classification"
        self.metric_name = "mAP" if multi_label else "accuracy"
        self.id2label = dict(enumerate(names))
        self.train_targets, self.eval_targets = train_targets, eval_targets


def resolve_labels(train_set, eval_set, args) -> Labels:
    """Labels from `--label_list` (AudioSet: data mids -> display names), the ClassLabel feature, or the data.

    Map-style sets get `(N, C)` target tensors up front; a stream gets `RowTargets`, computed batch
    by batch and checked as the stream is read.
    """
    label_feature = (train_set.features or {}).get(args.label_column_name)
    names = class_label_names(label_feature)
    multi_label = label_feature is not None and not isinstance(label_feature, (ClassLabel, datasets.Value))
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

    def to_names(value):
        # ClassLabel ints -> names; everything -> str, so ids from a label file and the data agree.
        def name(label):
            return names[label] if names is not None else str(label)

        return [name(label) for label in value] if isinstance(value, list) else name(value)

    if args.streaming:
        train_targets = eval_targets = RowTargets(args.label_column_name, label2id, to_names)
        where = f"streaming {args.dataset_name}:"
    else:
        train_targets = multi_hot([to_names(value) for value in train_set[args.label_column_name]], label2id)
        eval_targets = multi_hot([to_names(value) for value in eval_set[args.label_column_name]], label2id)
        where = f"{len(train_set)} training / {len(eval_set)} eval clips,"
    resolved = Labels(display_names, multi_label, train_targets, eval_targets)
    logger.info(f"{where} {len(labels)} labels ({resolved.problem_type})")
    return resolved


def longest_clip_frames(dataset, args, num_clips=CLIP_LENGTH_SAMPLE) -> int | None:
    """Kaldi frames (25 ms / 10 ms at 16 kHz) of the longest of up to `num_clips` training clips, read from headers."""
    import soundfile

    rate = 16000
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
                seconds = len(decode_audio(value, rate)) / rate
            except Exception:
                continue  # a corrupt clip; the collator reports it
        longest = max(longest, num_frames(int(seconds * rate), *frame_geometry(rate)))
    return longest or None


def checkpoint_model_type(source) -> str | None:
    """`model_type` of a Hub id or folder (None for a weights file or an unreadable config)."""
    if is_weights_file(source):
        return None
    try:
        return transformers.AutoConfig.from_pretrained(source, trust_remote_code=False).model_type
    except (OSError, ValueError):
        config = Path(source, "config.json")
        return json.loads(config.read_text()).get("model_type") if config.exists() else None


def apply_auto_recipe(args, train_set, labels: Labels) -> None:
    """What `auto` derives from the data (all but the warm-up, which needs the run's length); flags stay as set."""
    derive_auto(args, args.hyperparameter_sources, multi_label=labels.multi_label,
                imbalance=1.0 if args.streaming else label_imbalance(labels.train_targets),
                clip_frames=None if args.max_length else longest_clip_frames(train_set, args),
                audio_checkpoint=checkpoint_model_type(args.model_name_or_path) in AUDIO_MODEL_TYPES)
    if args.compute_norm_stats:
        args.hyperparameter_sources["norm_mean"] = args.hyperparameter_sources["norm_std"] = (
            "flag: measured on the training split (--compute_norm_stats)")
        return
    own = checkpoint_norm_stats(args.model_name_or_path)
    if own is not None:
        why = "the checkpoint's own feature extractor: the inputs it was trained on"
    else:
        own = (AUDIOSET_MEAN, AUDIOSET_STD)
        why = ("AudioSet's, as transformers' ASTFeatureExtractor; the data's own statistics measured 0.14 mAP "
               "worse on the recipe benchmark's events (pass --compute_norm_stats for them)")
    set_auto(args, args.hyperparameter_sources, "norm_mean", own[0], why)
    set_auto(args, args.hyperparameter_sources, "norm_std", own[1], why)


def checkpoint_norm_stats(source) -> tuple[float, float] | None:
    """The (mean, std) of an audio checkpoint's saved feature extractor, or None (image backbones, files, offline)."""
    if is_weights_file(source):
        return None
    try:
        path = transformers.utils.cached_file(
            source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
        saved = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return None
    mean, std = saved.get("mean"), saved.get("std")
    numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in (mean, std))
    return (float(mean), float(std)) if numbers and std > 0 else None  # an image processor's means are lists


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def build_model(args, labels: Labels) -> HfAstForAudioClassification:
    """An hf-ast/transformers AST checkpoint is re-gridded; an image DeiT/ViT/timm checkpoint goes through from_deit.

    The model records how it trains (`trained_padding`, so it is served the same way); gradient
    checkpointing and `--freeze_encoder_layers` are applied.
    """
    source, id2label, problem_type = args.model_name_or_path, labels.id2label, labels.problem_type
    geometry = dict(max_length=args.max_length, num_mel_bins=args.num_mel_bins,
                    frequency_stride=args.fstride, time_stride=args.tstride)
    if checkpoint_model_type(source) in AUDIO_MODEL_TYPES:
        checkpoint = HfAstConfig.from_pretrained(source)
        known = id2label_with_int_keys(checkpoint.id2label)
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
    # Saved with the model: a model trained padded ignores frame masks when served (see HfAstModel.forward).
    model.config.trained_padding = args.padding
    # Training-time patch dropping (PaSST); checked against the patch grid here, before any training.
    for name in PATCHOUT_FIELDS:
        setattr(model.config, name, getattr(args, name, None) or 0)
    model.config._check_patchout()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.freeze_encoder_layers:
        freeze(model, args.freeze_encoder_layers)
    return model


def patchout_seed(seed: int, process_index: int, epoch: int, batch: int) -> int:
    """The seed of one training batch's patchout draws on one process.

    Its own per process: Accelerate's `set_seed` gives every process the same global seed, under
    which all processes of a distributed run would drop the same columns. A function of the batch's
    place in the run, not of a generator's history, so a resumed run draws what the uninterrupted one did.
    """
    return int(np.random.SeedSequence([seed, process_index, epoch, batch]).generate_state(1)[0])


@contextmanager
def patchout_off(config: HfAstConfig):
    """The config with patchout reset to 0 while a model is saved: patchout is how this run trained, not how the
    saved model should behave, and a later `model.train()` (fine-tuning) would otherwise drop patches unknowingly.
    The values used are in training_args.json."""
    values = {name: getattr(config, name) for name in PATCHOUT_FIELDS}
    for name, value in values.items():
        setattr(config, name, 0.0 if isinstance(value, float) else 0)
    try:
        yield config
    finally:
        for name, value in values.items():
            setattr(config, name, value)


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


# ---------------------------------------------------------------------------------------------
# Loaders and schedule
# ---------------------------------------------------------------------------------------------


class Loaders:
    """The training and eval loaders, map-style or streamed: the one place that knows the difference.

    Map-style: Accelerate's prepared loaders (shuffled by (seed, epoch), or a balanced draw), a
    known epoch length, and a resume that skips the batches already trained on. Streamed: every
    process reads the same stream and keeps its share of each global batch (`hf_ast.training.streaming`),
    the epoch ends when the stream does, and a resume continues from the stream's saved position.
    """

    def __init__(self, train, eval, train_collator, shard=None, sampler=None, gradient_accumulation_steps=1):
        self.train, self.eval = train, eval
        self.train_collator, self.shard, self.sampler = train_collator, shard, sampler
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self._resume_batches, self._resume_stream = 0, None

    @property
    def streaming(self) -> bool:
        return self.shard is not None

    def prepare(self, accelerator, model, optimizer):
        """`accelerator.prepare`; a stream's shards already split the data, so Accelerate must not split it again."""
        if self.streaming:
            return accelerator.prepare(model, optimizer)
        model, optimizer, self.train, self.eval = accelerator.prepare(model, optimizer, self.train, self.eval)
        return model, optimizer

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch; None for a stream, whose length is unknown."""
        return None if self.streaming else math.ceil(len(self.train) / self.gradient_accumulation_steps)

    def total_steps(self, args) -> int:
        if self.streaming:
            return args.max_train_steps
        total = args.num_train_epochs * self.steps_per_epoch
        return min(total, args.max_train_steps) if args.max_train_steps else total

    def resume_within_epoch(self, history, completed_steps: int) -> None:
        """Resume the epoch `history` was saved in: from the stream's position, or past the batches it trained on."""
        if self.streaming:
            self._resume_stream = history.stream_state
        else:
            done = completed_steps - history.epoch * self.steps_per_epoch
            self._resume_batches = done * self.gradient_accumulation_steps

    def epoch(self, epoch: int, steps_left: int, accelerator):
        """This epoch's training batches (what a resume left of them), and the most batches it can still read."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.train_collator.set_epoch(epoch)
        loader, skipped = self.train, 0
        if self.streaming:  # shuffle seeded by (seed, epoch); a resume continues from the saved stream position
            self.shard.set_epoch(epoch, resume=self._resume_stream)
            self._resume_stream = None
        elif self._resume_batches:
            # A checkpoint taken after the epoch's last step leaves nothing to read: on to its evaluation.
            skipped = min(self._resume_batches, len(self.train))
            loader = accelerator.skip_first_batches(self.train, skipped) if skipped < len(self.train) else []
            self._resume_batches = 0
        if steps_left <= 0:  # resumed from the run's last step: evaluate, train no further
            loader = []
        if hasattr(loader, "set_epoch"):  # the shuffle of epoch e is seeded by (seed, e), also after a resume
            loader.set_epoch(epoch)
        batches_left = steps_left * self.gradient_accumulation_steps
        if not self.streaming:
            batches_left = min(batches_left, len(self.train) - skipped)
        return loader, batches_left


def build_loaders(train_set, eval_set, train_collator, eval_collator, labels: Labels, args, accelerator) -> Loaders:
    """Training and eval loaders for map-style or streamed splits (see `Loaders`)."""
    if args.streaming:
        # Every process reads the same stream and keeps its share of each global batch (hf_ast.training.streaming).
        shard = dict(num_processes=accelerator.num_processes, process_index=accelerator.process_index)
        train_shard = StreamShard(train_set, args.per_device_train_batch_size, check_row=labels.train_targets.check,
                                  **shard)
        train_loader = DataLoader(train_shard, batch_size=None, collate_fn=ShardCollator(train_collator),
                                  num_workers=args.preprocessing_num_workers)
        eval_shard = StreamShard(eval_set, args.per_device_eval_batch_size, check_row=labels.eval_targets.check,
                                 **shard)
        eval_loader = DataLoader(eval_shard, batch_size=None, collate_fn=ShardCollator(eval_collator))
        return Loaders(train_loader, eval_loader, train_collator, shard=train_shard,
                       gradient_accumulation_steps=args.gradient_accumulation_steps)
    # INDEX_KEY is each row's position in the targets tensor (and keys its augmentation randomness).
    train_set = train_set.add_column(INDEX_KEY, list(range(len(train_set))))
    eval_set = eval_set.add_column(INDEX_KEY, list(range(len(eval_set))))
    sampler = None
    if args.balanced_sampling:
        weights = balanced_sample_weights(labels.train_targets.numpy())
        # Every process makes the same draw; accelerator.prepare deals its batches out, so gradient
        # accumulation sees the end of each epoch as usual.
        sampler = SeededWeightedSampler(weights, seed=args.seed)
        train_loader = DataLoader(train_set, batch_size=args.per_device_train_batch_size, sampler=sampler,
                                  collate_fn=train_collator, num_workers=args.preprocessing_num_workers)
    else:
        train_loader = DataLoader(train_set, batch_size=args.per_device_train_batch_size, shuffle=True,
                                  collate_fn=train_collator, num_workers=args.preprocessing_num_workers)
    eval_loader = DataLoader(eval_set, batch_size=args.per_device_eval_batch_size, collate_fn=eval_collator,
                             num_workers=args.preprocessing_num_workers)
    return Loaders(train_loader, eval_loader, train_collator, sampler=sampler,
                   gradient_accumulation_steps=args.gradient_accumulation_steps)


def build_scheduler(args, optimizer, steps_per_epoch: int | None, total_steps: int, history):
    """The reference's warm-up and per-epoch step decay (`--lr_scheduler_type step`), or a transformers schedule.

    The scheduler steps once per optimizer step on every process (it is not prepared: no step scaling).
    """
    if args.lr_scheduler_type != "step":
        return transformers.get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                                          num_training_steps=total_steps)

    def lr_lambda(step):
        # A stream's epoch length is unknown: its decay follows the epoch being read.
        epoch = step // steps_per_epoch + 1 if steps_per_epoch else history.epoch + 1
        return warmup_factor(step, args.warmup_steps) * step_decay_factor(
            epoch, args.lr_decay_start_epoch, args.lr_decay_every, args.lr_decay_gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def start_epoch_lr(optimizer, scheduler, args) -> None:
    """Set the step schedule's rate for this epoch's first step.

    A stream tells that an epoch has ended only when it ends, after the rate of the next step was
    set: re-read it now. For map-style data this sets the value the schedule already set.
    """
    if args.lr_scheduler_type == "step":
        for group, base_lr, lr_lambda in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * lr_lambda(scheduler.last_epoch)


def resume(accelerator, args, states: dict, loaders: Loaders) -> tuple[int, int, bool]:
    """Load `--resume_from_checkpoint` (a folder, or "latest"): the completed steps, the epoch to start, and
    whether that epoch is resumed part way (its loss so far and where to continue are in the checkpoint)."""
    latest = args.resume_from_checkpoint == "latest"
    path = latest_checkpoint(args.output_dir) if latest else Path(args.resume_from_checkpoint)
    if path is None:
        logger.info("no complete checkpoint found: starting from scratch")
        return 0, 0, False
    load_checkpoint(accelerator, path, states)
    history = states["hf_ast_history"]
    completed_steps, start_epoch, within_epoch = history.completed_steps, history.epoch, False
    if len(history.records) > start_epoch:  # saved after that epoch's evaluation
        start_epoch += 1
    else:
        # Saved during the epoch, or after its last step but before its evaluation (which still runs):
        # go on from there, with the epoch's loss so far from `history`.
        within_epoch = True
        loaders.resume_within_epoch(history, completed_steps)
    logger.info(f"resumed from {path}: step {completed_steps}, epoch {start_epoch + 1}")
    return completed_steps, start_epoch, within_epoch


def training_loss(logits, targets, loss):
    """BCE over labels or cross-entropy, both on float targets (mixup makes them soft)."""
    logits = logits.float()
    if loss == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return torch.nn.functional.cross_entropy(logits, targets)


# ---------------------------------------------------------------------------------------------
# History, checkpointed
# ---------------------------------------------------------------------------------------------


class TrainingHistory:
    """Per-epoch records, running weight average and skip counters, saved in every checkpoint.

    Its `state_dict()` holds JSON values, numpy arrays (`epoch_scores`) and tensors (the weight
    sum): `atomic_save_state` stores it as JSON and safetensors, never as a pickle.
    """

    def __init__(self):
        self.records, self.epoch_scores, self.completed_steps, self.bad_clips, self.seen_clips = [], [], 0, 0, 0
        self.weight_average = RunningAverage(accumulate_dtype=torch.float64)
        self.epoch, self.stream_state = 0, None  # streaming: the epoch being read and the position in it
        # The epoch so far (summed over processes): loss over its batches, and the lr of its last step.
        self.epoch_loss, self.epoch_batches, self.step_lr = 0.0, 0, None

    def count_batch(self, batch: dict, loss: torch.Tensor, accelerator) -> None:
        """Add a training batch's bad and seen clips and its loss, summed over processes, and the stream position.

        Every process, and so every checkpoint, holds the totals; the epoch's loss too, so a run resumed
        mid-epoch reports the loss over all of its batches.
        """
        totals = accelerator.reduce(torch.cat([
            torch.tensor([batch["num_bad"], batch["num_clips"], 1], dtype=torch.float64, device=accelerator.device),
            loss.detach().double().reshape(1)])).tolist()
        self.bad_clips += int(totals[0])
        self.seen_clips += int(totals[1])
        self.epoch_batches += int(totals[2])
        self.epoch_loss += totals[3]
        self.stream_state = batch.get("stream_state")  # streaming: the position after this batch

    def epoch_record(self, results: dict, bad_eval_clips: int) -> dict:
        """The finished epoch's line of the results: mean training loss, the lr of its last step, eval metrics."""
        return {"epoch": self.epoch + 1, "step": self.completed_steps,
                "train_loss": self.epoch_loss / max(1, self.epoch_batches), "lr": self.step_lr, **results,
                "bad_eval_clips": bad_eval_clips}

    def add_to_average(self, state_dict):
        self.weight_average.add(state_dict)

    @property
    def average_count(self) -> int:
        return self.weight_average.count

    def averaged_state_dict(self):
        return self.weight_average.average(torch.float32)

    def state_dict(self):
        return {"records": self.records, "epoch_scores": self.epoch_scores, "completed_steps": self.completed_steps,
                "bad_clips": self.bad_clips, "seen_clips": self.seen_clips,
                "average_count": self.weight_average.count, "sum": self.weight_average.sums, "epoch": self.epoch,
                "stream_state": self.stream_state, "epoch_loss": self.epoch_loss,
                "epoch_batches": self.epoch_batches, "step_lr": self.step_lr}

    def load_state_dict(self, state):
        self.records, self.epoch_scores = state["records"], state["epoch_scores"]
        self.completed_steps, self.bad_clips, self.seen_clips = (
            state["completed_steps"], state["bad_clips"], state["seen_clips"])
        self.weight_average.count, self.weight_average.sums = state["average_count"], state["sum"]
        self.epoch, self.stream_state = state["epoch"], state["stream_state"]
        self.epoch_loss, self.epoch_batches = state["epoch_loss"], state["epoch_batches"]
        self.step_lr = state["step_lr"]


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, batches, multi_label: bool, accelerator=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores (sigmoid for multi-label, else softmax) and targets of the valid rows, and the number of bad clips.

    With an `accelerator`, gathered across processes; bad clips are counted after gathering, where
    Accelerate has dropped the repeats that even out the last batch. Without one, on the model's
    device. Rows with `valid` False (undecodable clips, stream padding) were placeholders: not scored.
    """
    device = accelerator.device if accelerator is not None else model.device
    was_training = model.training
    model.eval()
    all_scores, all_targets, num_bad = [], [], 0
    for batch in batches:
        inputs = {"input_values": batch["input_values"].to(device)}
        if "attention_mask" in batch:
            inputs["attention_mask"] = batch["attention_mask"].to(device)
        scores = scores_from_logits(model(**inputs).logits.float(), "sigmoid" if multi_label else "softmax")
        bad = batch.get("bad", torch.zeros(len(scores), dtype=torch.bool))
        rows = (scores, batch["labels"].to(device), batch["valid"].to(device), bad.to(device))
        scores, targets, valid, bad = accelerator.gather_for_metrics(rows) if accelerator is not None else rows
        all_scores.append(scores[valid].cpu())
        all_targets.append(targets[valid].cpu())
        num_bad += int(bad.sum())
    model.train(was_training)
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
        raise RuntimeError(f"{bad} of {seen} {split} clips could not be decoded (> --max_bad_fraction "
                           f"{max_fraction}); check the dataset and that its format can be decoded "
                           "(torchcodec/FFmpeg, libsndfile)")


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


# ---------------------------------------------------------------------------------------------
# Normalisation statistics
# ---------------------------------------------------------------------------------------------


def build_extractor(args, train_set, accelerator) -> HfAstFeatureExtractor:
    """The run's feature extractor (saved with the model): geometry, padding, and normalisation statistics.

    A model trained padding-free is served padding-free: its extractor pads to the longest clip, with
    masks. The statistics come from `--norm_mean`/`--norm_std`, or are measured (`--compute_norm_stats`).
    """
    extractor = HfAstFeatureExtractor(max_length=args.max_length, num_mel_bins=args.num_mel_bins, padding=args.padding,
                                      return_attention_mask=args.padding == "longest")
    if args.norm_mean is not None:
        extractor.mean = args.norm_mean
    if args.norm_std is not None:
        extractor.std = args.norm_std
    if args.compute_norm_stats:
        extractor.mean, extractor.std = measure_norm_stats(train_set, args, extractor, accelerator)
        args.norm_mean, args.norm_std = extractor.mean, extractor.std
        logger.info(f"training-split fbank statistics: mean {extractor.mean:.6f}, std {extractor.std:.6f}")
    return extractor


def measure_norm_stats(train_set, args, extractor, accelerator) -> tuple[float, float]:
    """Mean and std of the training split's log-mel frames: no augmentation, padded frames excluded.

    Measured on a random sample of `NORM_STATS_CLIPS` clips (files are often sorted by class), or
    on a stream's first `--max_train_samples`.
    """
    collator = AudioCollator(extractor, args.audio_column_name, None, train=False, normalize=False)
    if args.streaming:
        shard = StreamShard(train_set.take(args.max_train_samples), args.per_device_eval_batch_size,
                            accelerator.num_processes, accelerator.process_index)
        loader = DataLoader(shard, batch_size=None, collate_fn=ShardCollator(collator))
    else:
        sample = train_set.shuffle(seed=args.seed).select(range(min(len(train_set), NORM_STATS_CLIPS)))
        loader = accelerator.prepare_data_loader(
            DataLoader(sample, batch_size=args.per_device_eval_batch_size, collate_fn=collator))
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


# ---------------------------------------------------------------------------------------------
# What a run writes
# ---------------------------------------------------------------------------------------------


def record_hyperparameters(args, output_dir, accelerator):
    """Log every recipe value with its origin and write training_args.json (values and `hyperparameter_sources`)."""
    sources = args.hyperparameter_sources
    lines = [f"  {name} = {getattr(args, name)!r}  [{sources.get(name, 'default')}]"
             for name in sorted(set(RECIPE_FLAGS) | set(sources))]
    logger.info(f"hyperparameters (recipe {args.recipe}):\n" + "\n".join(lines), main_process_only=True)
    if accelerator.is_main_process:
        (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2, default=str))


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
        with patchout_off(model.config):  # saved for inference and further fine-tuning
            model.save_pretrained(output_dir, state_dict=state_dict)
            write_model_card(output_dir / "README.md", model.config, vars(args), history.records, results)
        extractor.save_pretrained(output_dir)
        if results is not None:
            (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        if history.records:
            plot_history(history.records, output_dir / "training_curves.png")
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=hub_token)
            api.create_repo(args.hub_model_id, exist_ok=True, private=args.hub_private_repo)
            api.upload_folder(
                repo_id=args.hub_model_id, folder_path=str(output_dir),
                commit_message="final model" if final else f"epoch {len(history.records)}",
                ignore_patterns=["checkpoints/**", "runs/**"],
            )
    accelerator.wait_for_everyone()
