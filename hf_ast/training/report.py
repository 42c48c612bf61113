"""What a finished run leaves next to its model: training curves and a model card."""

from pathlib import Path


def plot_history(records: list[dict], path, metric: str | None = None) -> Path:
    """Training loss and the eval metric per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or ("mAP" if "mAP" in records[0] else "accuracy")
    epochs = [r["epoch"] for r in records]
    figure, loss_axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    loss_axis.plot(epochs, [r["train_loss"] for r in records], "o-", color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    metric_axis = loss_axis.twinx()
    metric_axis.plot(epochs, [r[metric] for r in records], "s-", color="tab:orange", label=f"eval {metric}")
    metric_axis.set_ylabel(f"eval {metric}", color="tab:orange")
    metric_axis.set_ylim(0, 1)
    loss_axis.set_title("hf-ast training")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def write_model_card(path, config, args: dict, records: list[dict], results: dict | None) -> Path:
    """A README.md model card for the run, in the layout of the package's MODEL_CARD.md template."""
    metric = "mAP" if config.problem_type == "multi_label_classification" else "accuracy"
    last = records[-1] if records else {}
    f, t = config.patch_grid
    rows = "\n".join(
        f"| {r['epoch']} | {r['train_loss']:.4f} | {r.get(metric, float('nan')):.4f} |" for r in records
    )
    averaged = (results or {}).get("weight_averaged")
    averaged_line = f"\nWeight-averaged model ({averaged['epochs']} epochs): {metric} {averaged[metric]:.4f}.\n" if averaged else ""
    dataset = args.get("dataset_name")
    card = f"""---
library_name: transformers
pipeline_tag: audio-classification
tags:
  - audio-classification
  - audio-spectrogram-transformer
  - hf-ast
---

# {Path(args.get('output_dir', 'model')).name}

An Audio Spectrogram Transformer (Gong, Chung & Glass, Interspeech 2021) trained with hf-ast on
`{dataset}` ({config.num_labels} labels, {config.problem_type}).

## Use

```python
from transformers import pipeline

classifier = pipeline("audio-classification", model="{args.get('hub_model_id') or args.get('output_dir')}", trust_remote_code=True)
```

## Architecture

| | |
|---|---|
| input | {config.num_mel_bins}-bin Kaldi log-mel filterbank, {config.max_length} frames, normalised with the saved extractor's mean/std (x - mean) / (2 std) |
| patches | {config.patch_size} x {config.patch_size}, stride {config.frequency_stride} x {config.time_stride}: {f} x {t} = {f * t} patches + cls + distillation |
| encoder | {config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} heads, MLP {config.intermediate_size} |
| head | LayerNorm + Linear on the mean of cls and distillation, {config.num_labels} labels |

## Training

Initialisation: `{args.get('model_name_or_path')}` (channel reduction {args.get('channel_reduction')}).
Recipe `{args.get('recipe')}`: lr {args.get('learning_rate')}, batch {args.get('per_device_train_batch_size')} per device,
{args.get('num_train_epochs')} epochs, warm-up {args.get('warmup_steps')} steps, decay x{args.get('lr_decay_gamma')} every
{args.get('lr_decay_every')} epoch(s) from epoch {args.get('lr_decay_start_epoch')}, mixup {args.get('mixup')},
SpecAugment {args.get('freq_mask')}/{args.get('time_mask')}, balanced sampling {args.get('balanced_sampling')}.

## Evaluation

| epoch | train loss | eval {metric} |
|---|---|---|
{rows}
{averaged_line}
Final eval {metric}: {last.get(metric, float('nan')):.4f}.

## Limitations

Scores are not calibrated probabilities; labels and their balance come from the training data.
See the hf-ast MODEL_CARD.md template for the full list of sections to complete before publishing.

## Citation

Gong, Chung & Glass, "AST: Audio Spectrogram Transformer", Interspeech 2021, doi:10.21437/Interspeech.2021-698.
"""
    Path(path).write_text(card)
    return Path(path)


__all__ = ["plot_history", "write_model_card"]
