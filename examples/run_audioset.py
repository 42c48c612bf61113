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
Accelerator, data and labels, model, features and augmentation, optimiser and schedule, resume,
training loop with evaluation, saving and pushing. The helpers it calls live in `hf_ast.training.loop`.
"""

import argparse
import json
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm

import hf_ast  # noqa: F401  (registers the Auto classes)
from hf_ast import HfAstForAudioClassification
from hf_ast.training import AudioCollator, atomic_save_state
from hf_ast.training.averaging import ensemble_predictions
from hf_ast.training.loop import (
    TrainingHistory,
    apply_auto_recipe,
    build_accelerator,
    build_extractor,
    build_loaders,
    build_model,
    build_scheduler,
    check_bad_fraction,
    check_eval_clips,
    compute_metrics,
    load_splits,
    patchout_off,
    patchout_seed,
    predict,
    record_hyperparameters,
    resolve_labels,
    resume,
    save_and_push,
    start_epoch_lr,
    training_loss,
)
from hf_ast.training.recipes import AUTO, RECIPE_FLAGS, RECIPES, check_contradictions, derive_auto_warmup, fill_recipe

logger = get_logger(__name__)


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
                      help="AudioSet class_labels_indices.csv or a one-label-per-line file; inferred from data "
                           "if unset")
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
                      help="read the splits as IterableDatasets (sets that do not fit on disk); needs "
                           "--max_train_steps")
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
    recipe.add_argument("--spec_augment", action=argparse.BooleanOptionalAction, default=None,
                        help="auto only: SpecAugment with widths scaled to the input (ESC-50's ratios, 3/16 of each "
                             "axis); auto turns it on for single-label data and off for label lists (see README)")
    recipe.add_argument("--freq_mask", type=int, default=None, help="SpecAugment frequency mask width (0 = off)")
    recipe.add_argument("--time_mask", type=int, default=None, help="SpecAugment time mask width (0 = off)")
    recipe.add_argument("--mask_value", choices=["mean", "reference"], default=None,
                        help="what SpecAugment writes: 'mean' (the data's mean, as SpecAugment does) or 'reference' "
                             "(log-mel 0 before normalisation, as the reference code: a loud band on quiet data)")
    recipe.add_argument("--mixup", type=float, default=None, help="fraction of training samples mixed up")
    recipe.add_argument("--noise", action=argparse.BooleanOptionalAction, default=None,
                        help="Speech Commands noise + time roll augmentation")
    recipe.add_argument("--balanced_sampling", action=argparse.BooleanOptionalAction, default=None)
    recipe.add_argument("--patchout_time", type=int, default=None,
                        help="PaSST patchout (training only): time columns of the patch grid dropped per batch. "
                             "Off (0) in every recipe; PaSST's AudioSet value is 40 of the 101 columns of 1024 "
                             "frames at --tstride 10: scale it with the columns, (max_length - 16) // tstride + 1")
    recipe.add_argument("--patchout_freq", type=int, default=None,
                        help="PaSST patchout: frequency rows dropped per batch; off (0) in every recipe; PaSST: 4 of "
                             "the 12 rows of 128 bins at --fstride 10")
    recipe.add_argument("--patchout_random", type=float, default=None,
                        help="unstructured patchout: fraction of each clip's remaining patches dropped at random; "
                             "off (0) in every recipe")
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
    args.hyperparameter_sources = fill_recipe(args, RECIPE_FLAGS)  # patchout too: off unless asked for
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

    # --- Accelerator and logging ---------------------------------------------------------------
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # --- Data and labels -----------------------------------------------------------------------
    train_set, eval_set = load_splits(args)
    labels = resolve_labels(train_set, eval_set, args)
    if args.recipe == AUTO:  # everything but the warm-up, which needs the run's length
        apply_auto_recipe(args, train_set, labels)

    # --- Model ---------------------------------------------------------------------------------
    model = build_model(args, labels)
    patchout_rng = model.audio_spectrogram_transformer.patchout_generator = torch.Generator()  # seeded per batch

    # --- Features and augmentation -------------------------------------------------------------
    extractor = build_extractor(args, train_set, accelerator)  # with the training split's statistics, if measured
    train_collator = AudioCollator(
        extractor, args.audio_column_name, labels.train_targets, train=True, mixup=args.mixup,
        freq_mask=args.freq_mask, time_mask=args.time_mask, noise=args.noise, seed=args.seed, padding=args.padding,
        mask_value=args.mask_value,
    )
    eval_collator = AudioCollator(extractor, args.audio_column_name, labels.eval_targets, train=False,
                                  keep_bad_rows=True, padding=args.padding)
    loaders = build_loaders(train_set, eval_set, train_collator, eval_collator, labels, args, accelerator)

    # --- Optimiser and schedule -----------------------------------------------------------------
    optimizer_class = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
        weight_decay=args.weight_decay, betas=(args.adam_beta1, args.adam_beta2),
    )
    history = TrainingHistory()
    model, optimizer = loaders.prepare(accelerator, model, optimizer)
    total_steps = loaders.total_steps(args)
    if args.recipe == AUTO:
        derive_auto_warmup(args, args.hyperparameter_sources, total_steps)
    check_contradictions(args, args.hyperparameter_sources, multi_label=labels.multi_label, total_steps=total_steps,
                         steps_per_epoch=loaders.steps_per_epoch)
    record_hyperparameters(args, output_dir, accelerator)
    scheduler = build_scheduler(args, optimizer, loaders.steps_per_epoch, total_steps, history)
    # Checkpointed beside Accelerate's state as JSON and safetensors, not registered with
    # accelerator.register_for_checkpointing: load_state unpickles registered objects in full, so a
    # crafted checkpoint could run code. The sampler is not checkpointed: its per-epoch draw is
    # deterministic, and the resume skips what was consumed. A stream's position travels in `history`.
    checkpoint_states = {"hf_ast_scheduler": scheduler, "hf_ast_history": history}
    if args.with_tracking:
        accelerator.init_trackers("hf_ast", {k: v for k, v in vars(args).items()
                                             if isinstance(v, (int, float, str, bool))})

    # --- Resume ---------------------------------------------------------------------------------
    completed_steps, start_epoch, resume_within_epoch = 0, 0, False
    if args.resume_from_checkpoint:
        completed_steps, start_epoch, resume_within_epoch = resume(accelerator, args, checkpoint_states, loaders)

    # --- Training -------------------------------------------------------------------------------
    progress = tqdm(range(total_steps), initial=completed_steps, disable=not accelerator.is_local_main_process,
                    desc="training")
    for epoch in range(start_epoch, args.num_train_epochs):
        model.train()
        history.epoch = epoch
        loader, batches_left = loaders.epoch(epoch, total_steps - completed_steps, accelerator)
        start_epoch_lr(optimizer, scheduler, args)
        if not resume_within_epoch:  # a resumed epoch keeps the loss and lr of its steps before the checkpoint
            history.epoch_loss, history.epoch_batches, history.step_lr = 0.0, 0, optimizer.param_groups[0]["lr"]
        resume_within_epoch = False
        step_lr = history.step_lr
        # The most clips the run can have read by this epoch's bad-fraction check: once more of them are bad
        # than --max_bad_fraction allows, the check will fail, so stop now, not after an epoch of placeholders.
        clips_bound = history.seen_clips + batches_left * args.per_device_train_batch_size * accelerator.num_processes
        for batch in loader:
            # Patchout's draw: its own on each process, and the same again in a resumed run.
            patchout_rng.manual_seed(patchout_seed(args.seed, accelerator.process_index, epoch, history.epoch_batches))
            with accelerator.accumulate(model):
                logits = model(input_values=batch["input_values"].to(accelerator.device),
                               attention_mask=batch["attention_mask"].to(accelerator.device)).logits
                # Every process runs the same number of steps even when clips were skipped.
                loss = training_loss(logits, batch["labels"].to(accelerator.device), args.loss)
                loss = loss * batch["valid"].to(accelerator.device).any()
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            history.count_batch(batch, loss, accelerator)  # summed over processes: every checkpoint holds the totals
            check_bad_fraction(history.bad_clips, history.seen_clips, args.max_bad_fraction, clips_bound)
            if accelerator.sync_gradients:
                history.step_lr = step_lr = optimizer.param_groups[0]["lr"]  # the lr this step used
                scheduler.step()
                completed_steps += 1
                history.completed_steps = completed_steps
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{step_lr:.2e}")
                if args.with_tracking:
                    accelerator.log({"train/loss": loss.item(), "train/lr": step_lr}, step=completed_steps)
                if args.checkpointing_steps.isdigit() and completed_steps % int(args.checkpointing_steps) == 0:
                    atomic_save_state(accelerator, output_dir, f"step_{completed_steps}", completed_steps,
                                      args.checkpoints_total_limit, checkpoint_states)
            if completed_steps >= total_steps:
                break
        check_bad_fraction(history.bad_clips, history.seen_clips, args.max_bad_fraction)

        # --- Evaluation -------------------------------------------------------------------------
        scores, references, eval_bad = predict(model, loaders.eval, labels.multi_label, accelerator)
        check_eval_clips(len(scores), eval_bad, args.max_bad_fraction)
        record = history.epoch_record(compute_metrics(scores, references, labels.multi_label), eval_bad)
        history.epoch_scores.append(scores)
        if args.weight_averaging_start_epoch and epoch + 1 >= args.weight_averaging_start_epoch:
            state = {k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            history.add_to_average(state)
            record["ensemble"] = compute_metrics(
                ensemble_predictions(history.epoch_scores[args.weight_averaging_start_epoch - 1:]),
                references, labels.multi_label)
        history.records.append(record)
        logger.info(f"epoch {epoch + 1}: {json.dumps(record)}")
        if args.with_tracking:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=completed_steps)
        if accelerator.is_main_process:
            (output_dir / f"epoch_{epoch + 1}_results.json").write_text(json.dumps(record, indent=2))
        if args.checkpointing_steps == "epoch":
            atomic_save_state(accelerator, output_dir, f"epoch_{epoch + 1}", completed_steps,
                              args.checkpoints_total_limit, checkpoint_states)
        if args.push_to_hub:
            save_and_push(accelerator, model, extractor, output_dir, args, history, final=False, hub_token=hub_token)
        if completed_steps >= total_steps:
            break
    progress.close()

    # --- Weight averaging, saving and pushing ------------------------------------------------------
    final = {"final": history.records[-1] if history.records else {}}
    if history.average_count:
        averaged = HfAstForAudioClassification(accelerator.unwrap_model(model).config)
        averaged.load_state_dict(history.averaged_state_dict())
        scores, references, _ = predict(accelerator.prepare_model(averaged, evaluation_mode=True), loaders.eval,
                                        labels.multi_label, accelerator)
        final["weight_averaged"] = {**compute_metrics(scores, references, labels.multi_label),
                                    "epochs": history.average_count}
        if accelerator.is_main_process:
            with patchout_off(averaged.config):
                averaged.save_pretrained(output_dir / "averaged")
            extractor.save_pretrained(output_dir / "averaged")
        logger.info(f"weight-averaged model over {history.average_count} epochs: {final['weight_averaged']}")
    final["bad_clips_skipped"] = history.bad_clips
    final["bad_eval_clips_skipped"] = history.records[-1]["bad_eval_clips"] if history.records else 0
    save_and_push(accelerator, model, extractor, output_dir, args, history, final=True, results=final,
                  hub_token=hub_token)
    if args.with_tracking:
        accelerator.end_training()
    logger.info(f"final {labels.metric_name}: {final['final'].get(labels.metric_name)}; "
                f"results in {output_dir / 'all_results.json'}")
    return final


if __name__ == "__main__":
    main()
