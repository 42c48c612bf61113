"""Weight averaging ("model soups") and prediction ensembles of AST models.

The reference recipe averages the weights of the checkpoints saved at the end of several epochs
of one run (AudioSet: epochs 1-5, 0.459 mAP against 0.448 for the last epoch alone) and ensembles
separately trained models by averaging their sigmoid outputs (0.475 mAP for 3 models, 0.485 for
6). Averaging weights only makes sense for models of one architecture, fine-tuned from the same
initialisation, with the same label order; `check_compatible` refuses anything else.

CLI:
    hf-ast-soup soup MODEL_DIR [MODEL_DIR ...] --output OUT [--eval-dataset NAME | --eval-features FEATURES.pt]

writes the weight-averaged model (and the first model's feature extractor) to OUT and, given an
evaluation set, prints each model, their prediction ensemble and the soup side by side. OUT must
be new or empty unless `--overwrite` is given (which replaces only the files the soup writes), and
may never be one of the MODEL_DIRs; as in `hf-ast-convert`, the files are staged beside OUT and
moved in once complete.

- `--eval-dataset` is a Hub id or local folder for `datasets.load_dataset`
  (`--eval-split`, `--audio-column`, `--label-column`, `--label-list`, `--max-eval-samples` as in
  examples/run_audioset.py); clips are decoded and turned into features by the first model's
  feature extractor, batch by batch; a clip that cannot be decoded is left out and counted;
- `--eval-features` is a `torch.save`d dict with `input_values` `(N, T, F)` and `labels`:
  `(N, C)` multi-hot or `(N,)` class ids, optionally `attention_mask`.
"""

import argparse
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from transformers import PretrainedConfig

from ..configuration_hf_ast import HfAstConfig
from ..conversion.cli import check_output_folder, staged_output_folder
from ..conversion.state_dicts import source_not_found
from ..feature_extraction_hf_ast import HfAstFeatureExtractor
from ..modeling_hf_ast import HfAstForAudioClassification
from .metrics import load_audio_classification_metric

# Config fields that change what the weights compute; models that differ in any of them cannot be
# averaged (some, like num_attention_heads, leave every tensor shape unchanged).
ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "qkv_bias",
    "patch_size",
    "frequency_stride",
    "time_stride",
    "max_length",
    "num_mel_bins",
)


class RunningAverage:
    """The arithmetic mean of state dicts with the same keys and shapes, added one at a time.

    Floating tensors are summed in `accumulate_dtype` (float64 for float64 tensors; training sums
    in float64) and averaged on demand; other tensors (integer counters, boolean masks) must be
    equal in every state dict and are kept. `count` and `sums` are what a checkpoint stores.
    """

    def __init__(self, accumulate_dtype: torch.dtype = torch.float32):
        self.accumulate_dtype = accumulate_dtype
        self.count = 0
        self.sums: dict[str, torch.Tensor] | None = None
        self.dtypes: dict[str, torch.dtype] = {}  # of the first state dict: the average's dtypes

    def add(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        index = self.count
        if self.sums is None:
            self.sums = {}
            for key, value in state_dict.items():
                value = value.detach()
                self.dtypes[key] = value.dtype
                if value.is_floating_point():
                    value = value.to(torch.promote_types(value.dtype, self.accumulate_dtype), copy=True)
                self.sums[key] = value
        else:
            missing = [key for key in self.sums if key not in state_dict]
            extra = [key for key in state_dict if key not in self.sums]
            if missing or extra:
                raise ValueError(
                    f"state dict {index} differs from state dict 0 in its keys: missing {missing[:3]}, extra "
                    f"{extra[:3]}; only models of the same architecture can be averaged."
                )
            for key, total in self.sums.items():
                value = state_dict[key].detach()
                if value.shape != total.shape:
                    raise ValueError(
                        f"tensor {key!r} has shape {tuple(value.shape)} in state dict {index} but "
                        f"{tuple(total.shape)} in state dict 0; only models of the same architecture can be averaged."
                    )
                if total.is_floating_point():
                    total += value.to(device=total.device, dtype=total.dtype)
                elif not torch.equal(value.to(total.device), total):
                    raise ValueError(
                        f"non-floating tensor {key!r} ({total.dtype}) differs between state dict 0 and state dict "
                        f"{index}; integer buffers cannot be averaged."
                    )
        self.count += 1

    def average(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The mean so far; floating tensors in `dtype`, or in the dtype they were added in."""
        if not self.count:
            raise ValueError("an average needs at least one state dict.")
        return {
            key: (total / self.count).to(dtype or self.dtypes[key]) if total.is_floating_point() else total.clone()
            for key, total in self.sums.items()
        }


def average_state_dicts(state_dicts: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Arithmetic mean of state dicts with the same keys and shapes (see `RunningAverage`).

    Floating tensors are summed in float32 (float64 for float64 tensors) and returned in the first
    state dict's dtype. `state_dicts` may be a generator: one state dict is read at a time, so N
    full models never need to be in memory together.
    """
    running = RunningAverage()
    for state_dict in state_dicts:
        running.add(state_dict)
    if not running.count:
        raise ValueError("average_state_dicts needs at least one state dict.")
    return running.average()


def _describe(item) -> tuple[PretrainedConfig | None, dict[str, tuple] | None]:
    """(config, tensor shapes) of a model, a config or a state dict; None where the item has none."""
    if isinstance(item, PretrainedConfig):
        return item, None
    if isinstance(item, torch.nn.Module):
        return getattr(item, "config", None), {key: tuple(value.shape) for key, value in item.state_dict().items()}
    if isinstance(item, Mapping):
        return None, {key: tuple(value.shape) for key, value in item.items()}
    raise TypeError(f"check_compatible takes models, configs or state dicts, not {type(item).__name__}.")


def _ordered_labels(config: PretrainedConfig) -> list[str]:
    id2label = config.id2label or {}
    return [str(id2label[key]) for key in sorted(id2label, key=int)]


def _first_difference(reference, other, a: str, b: str) -> str | None:
    """Why `other` (config, shapes), named `b`, cannot be averaged or ensembled with `reference` (`a`), or None."""
    (config_a, shapes_a), (config_b, shapes_b) = reference, other
    if config_a is not None and config_b is not None:
        for field in ARCHITECTURE_FIELDS:
            value_a, value_b = getattr(config_a, field, None), getattr(config_b, field, None)
            if value_a != value_b:
                return f"{field} is {value_a!r} in {a} but {value_b!r} in {b}"
        labels_a, labels_b = _ordered_labels(config_a), _ordered_labels(config_b)
        if len(labels_a) != len(labels_b):
            return f"{a} has {len(labels_a)} labels but {b} has {len(labels_b)}"
        for class_id, (label_a, label_b) in enumerate(zip(labels_a, labels_b)):
            if label_a != label_b:
                return (
                    f"class {class_id} is {label_a!r} in {a} but {label_b!r} in {b} (id2label order differs; the "
                    "classifier rows would be mixed across classes)"
                )
    if shapes_a is not None and shapes_b is not None:
        for key, shape in shapes_a.items():
            if key not in shapes_b:
                return f"tensor {key!r} of {a} is missing from {b}"
            if shapes_b[key] != shape:
                return f"tensor {key!r} has shape {shape} in {a} but {shapes_b[key]} in {b}"
        for key in shapes_b:
            if key not in shapes_a:
                return f"tensor {key!r} of {b} is missing from {a}"
    return None


def check_compatible(items: Sequence, names: Sequence[str] | None = None) -> None:
    """Refuse models (or configs, or state dicts) that cannot be averaged or ensembled together.

    Compares each item with the first: the architecture fields of their configs, the label order
    (`id2label`), then tensor names and shapes; raises `ValueError` naming the first difference.
    `names` (e.g. the model directories) are used in the message.
    """
    if len(items) == 0:
        raise ValueError("check_compatible needs at least one model.")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(items))]
    described = [_describe(item) for item in items]
    for index in range(1, len(items)):
        difference = _first_difference(described[0], described[index], names[0], names[index])
        if difference is not None:
            raise ValueError(f"{names[index]} is not compatible with {names[0]}: {difference}.")


def ensemble_predictions(scores: Sequence):
    """Mean of per-model scores, each `(N, C)`: the ensemble's scores `(N, C)`.

    Pass probabilities (sigmoid outputs for multi-label models, as the reference's ensembles;
    softmax for single-label), not logits. All torch tensors in, a tensor out; otherwise numpy.
    """
    if len(scores) == 0:
        raise ValueError("ensemble_predictions needs at least one array of scores.")
    shapes = {tuple(s.shape) for s in scores}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every model's scores must have the same (N, num_labels) shape; got {sorted(shapes)}.")
    if all(isinstance(s, torch.Tensor) for s in scores):
        return torch.stack(list(scores)).mean(dim=0)
    return np.mean(np.stack([np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s) for s in scores]), axis=0)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def load_eval_features(path: str) -> dict[str, torch.Tensor]:
    features = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(features, Mapping) or "input_values" not in features or "labels" not in features:
        raise ValueError(f"{path} must hold a dict with 'input_values' (N, T, F) and 'labels' (N, C) or (N,).")
    input_values, labels = features["input_values"], features["labels"]
    if input_values.dim() != 3 or labels.shape[0] != input_values.shape[0] or labels.dim() not in (1, 2):
        raise ValueError(
            f"{path}: input_values {tuple(input_values.shape)} and labels {tuple(labels.shape)}; expected (N, T, F) "
            "features and (N, C) multi-hot or (N,) class-id labels."
        )
    return dict(features)


class FeatureBatches:
    """Batches of a features file: `{"input_values", ["attention_mask"], "labels"}` slices, all rows valid."""

    def __init__(self, features: Mapping[str, torch.Tensor], batch_size: int):
        self.features, self.batch_size = features, batch_size
        self.multi_label = features["labels"].dim() == 2

    def __iter__(self):
        for start in range(0, len(self.features["input_values"]), self.batch_size):
            batch = {key: value[start : start + self.batch_size] for key, value in self.features.items()}
            batch["valid"] = torch.ones(len(batch["input_values"]), dtype=torch.bool)
            yield batch


class DatasetBatches:
    """Batches of an audio dataset's split, decoded and featurised by `extractor` as they are needed.

    Labels are mapped to the models' label ids through `label2id`; with `label_list` (AudioSet's
    class_labels_indices.csv) the data's ids (`/m/09x0r`) are first turned into the display names
    that `id2label` holds. A clip that cannot be decoded becomes a row with `valid=False`.
    """

    def __init__(self, name: str, extractor, label2id: Mapping[str, int], multi_label: bool, batch_size: int,
                 split: str = "test", config_name: str | None = None, audio_column: str = "audio",
                 label_column: str = "labels", label_list: str | None = None, max_samples: int | None = None):
        from datasets import Audio, load_dataset

        from ..labels import class_label_names, multi_hot, read_label_list
        from .collator import AudioCollator
        from .streaming import INDEX_KEY

        dataset = load_dataset(name, config_name, split=split)
        for column in (audio_column, label_column):
            if column not in dataset.column_names:
                raise ValueError(f"column {column!r} not in {name} ({split}); available columns: "
                                 f"{dataset.column_names}. Pass --audio-column / --label-column.")
        if max_samples:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        names = class_label_names(dataset.features[label_column])
        to_display = dict(zip(*read_label_list(label_list))) if label_list else {}

        def display(label):
            label = names[label] if names is not None else str(label)
            return to_display.get(label, label)

        values = dataset[label_column]
        targets = multi_hot([[display(v) for v in value] if isinstance(value, list) else display(value)
                             for value in values], label2id)
        self.multi_label = multi_label
        self.labels = targets if multi_label else targets.argmax(-1)
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
        self.dataset = dataset.add_column(INDEX_KEY, range(len(dataset)))
        self.collator = AudioCollator(extractor, audio_column, targets, train=False, keep_bad_rows=True)
        self.batch_size = batch_size

    def __iter__(self):
        for start in range(0, len(self.dataset), self.batch_size):
            batch = self.collator(list(self.dataset.select(range(start, min(start + self.batch_size,
                                                                             len(self.dataset))))))
            batch["labels"] = self.labels[start : start + self.batch_size]
            # Scored padded, without the mask, as the training script's evaluation and the pipeline do.
            del batch["attention_mask"]
            yield batch


def format_table(results: dict[str, dict], columns: Sequence[str]) -> str:
    width = max(len("model"), *(len(name) for name in results))
    lines = ["  ".join(["model".ljust(width), *(column.rjust(8) for column in columns)])]
    for name, values in results.items():
        lines.append("  ".join([name.ljust(width), *(f"{values[column]:8.4f}" for column in columns)]))
    return "\n".join(lines)


def soup(
    model_dirs: Sequence[str],
    output: str,
    eval_features: str | None = None,
    batch_size: int = 8,
    device: str | None = None,
    eval_dataset: dict | None = None,
    overwrite: bool = False,
) -> dict[str, dict] | None:
    """Average the weights of `model_dirs` into `output`; given an eval set, return and print a metrics table.

    `eval_dataset` holds `DatasetBatches` keyword arguments (`name`, `split`, `audio_column`, ...).
    `output` must be new or empty unless `overwrite`, and never one of `model_dirs`.
    """
    from .loop import predict  # the training script's evaluation (imports the training extras)

    if eval_features and eval_dataset:
        raise ValueError("pass --eval-features or --eval-dataset, not both")
    check_output_folder(output, model_dirs, overwrite)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    configs = []
    for path in model_dirs:
        with source_not_found(path):
            configs.append(HfAstConfig.from_pretrained(path))
    check_compatible(configs, names=list(model_dirs))
    if eval_features:
        features = FeatureBatches(load_eval_features(eval_features), batch_size)
    elif eval_dataset:
        multi_label = configs[0].problem_type == "multi_label_classification"
        features = DatasetBatches(extractor=HfAstFeatureExtractor.from_pretrained(model_dirs[0]),
                                  label2id=configs[0].label2id, multi_label=multi_label, batch_size=batch_size,
                                  **eval_dataset)
    else:
        features = None
    multi_label = features is not None and features.multi_label
    scores: dict[str, np.ndarray] = {}
    labels = None

    container = HfAstForAudioClassification.from_pretrained(model_dirs[0])

    def state_dicts():
        # One model in memory at a time (plus the container); each is scored while loaded.
        for path in model_dirs:
            model = container if path == model_dirs[0] else HfAstForAudioClassification.from_pretrained(path)
            check_compatible([container, model], names=[model_dirs[0], path])
            if features is not None:
                nonlocal labels
                scores[path], labels, _ = predict(model.to(device), features, multi_label)
            yield model.state_dict()

    averaged = average_state_dicts(state_dicts())
    container.load_state_dict(averaged)
    with staged_output_folder(output) as staging:
        container.save_pretrained(staging)
        try:
            HfAstFeatureExtractor.from_pretrained(model_dirs[0]).save_pretrained(staging)
        except OSError:
            print(f"warning: {model_dirs[0]} has no feature extractor (preprocessor_config.json); none written to "
                  f"{output}")
    print(f"wrote the average of {len(model_dirs)} models to {output}")
    if features is None:
        return None

    if len(model_dirs) > 1:
        scores["ensemble"] = ensemble_predictions(list(scores.values()))
    scores["soup"], _, _ = predict(container.to(device), features, multi_label)
    metric = load_audio_classification_metric(multi_label, keep_in_memory=True)
    print(f"evaluated on {len(labels)} clips")
    results = {name: metric.compute(predictions=s, references=labels) for name, s in scores.items()}
    columns = ["mAP", "mAUC", "d_prime"] if multi_label else ["accuracy", "top5_accuracy"]
    print(format_table(results, columns))
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hf_ast.training.averaging", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    soup_parser = commands.add_parser(
        "soup",
        help="average the weights of models of one architecture and label order",
        description="Average the weights of hf-ast models (same architecture, same labels, same initialisation).",
    )
    soup_parser.add_argument("model_dirs", nargs="+", help="saved HfAstForAudioClassification directories")
    soup_parser.add_argument("--output", required=True,
                             help="directory for the averaged model: new or empty, unless --overwrite")
    soup_parser.add_argument("--overwrite", action="store_true",
                             help="write into a non-empty --output: replace the files the soup writes and keep every "
                                  "other file (never allowed when it is one of MODEL_DIRS)")
    soup_parser.add_argument(
        "--eval-features",
        help="torch.save'd dict with input_values (N, T, F) and labels ((N, C) multi-hot or (N,) ids); "
        "prints each model, the ensemble and the soup",
    )
    soup_parser.add_argument("--eval-dataset", help="Hub id or local folder of an audio dataset to evaluate on")
    soup_parser.add_argument("--eval-config", default=None, help="dataset configuration (e.g. 'balanced')")
    soup_parser.add_argument("--eval-split", default="test")
    soup_parser.add_argument("--audio-column", default="audio")
    soup_parser.add_argument("--label-column", default="labels")
    soup_parser.add_argument("--label-list", default=None,
                             help="AudioSet class_labels_indices.csv: maps the data's ids to the models' label names")
    soup_parser.add_argument("--max-eval-samples", type=int, default=None)
    soup_parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    soup_parser.add_argument("--device", help="torch device for evaluation (default: cuda if available)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    if args.eval_dataset and args.eval_features:
        parser.error("--eval-dataset and --eval-features both give the evaluation set; pass one")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.command == "soup":
        eval_dataset = None
        if args.eval_dataset:
            eval_dataset = dict(name=args.eval_dataset, config_name=args.eval_config, split=args.eval_split,
                                audio_column=args.audio_column, label_column=args.label_column,
                                label_list=args.label_list, max_samples=args.max_eval_samples)
        return soup(args.model_dirs, args.output, args.eval_features, args.batch_size, args.device, eval_dataset,
                    overwrite=args.overwrite)


if __name__ == "__main__":
    main()


__all__ = ["average_state_dicts", "check_compatible", "ensemble_predictions", "soup"]
