"""Weight averaging ("model soups") and prediction ensembles of AST models.

The reference recipe averages the weights of the checkpoints saved at the end of several epochs
of one run (AudioSet: epochs 1-5, 0.459 mAP against 0.448 for the last epoch alone) and ensembles
separately trained models by averaging their sigmoid outputs (0.475 mAP for 3 models, 0.485 for
6). Averaging weights only makes sense for models of one architecture, fine-tuned from the same
initialisation, with the same label order; `check_compatible` refuses anything else.

CLI:
    python -m hf_ast.averaging soup MODEL_DIR [MODEL_DIR ...] --output OUT [--eval-features FEATURES.pt]

writes the weight-averaged model (and the first model's feature extractor) to OUT and, with
`--eval-features` (a `torch.save`d dict with `input_values` `(N, T, F)` and `labels`: `(N, C)`
multi-hot or `(N,)` class ids, optionally `attention_mask`), prints each model, their ensemble
and the soup side by side.
"""

import argparse
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from transformers import PretrainedConfig

from .configuration_hf_ast import HfAstConfig
from .feature_extraction_hf_ast import HfAstFeatureExtractor
from .metrics import load_audio_classification_metric
from .modeling_hf_ast import HfAstForAudioClassification

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


def average_state_dicts(state_dicts: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Arithmetic mean of state dicts with the same keys and shapes.

    Floating tensors are averaged (summed in float32, or float64 for float64 tensors, and returned
    in the first state dict's dtype); other tensors (integer counters, boolean masks) must be equal
    in every state dict and are kept. `state_dicts` may be a generator: one state dict is read at
    a time, so N full models never need to be in memory together.
    """
    totals: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}
    count = 0
    for index, state_dict in enumerate(state_dicts):
        if count == 0:
            first = {key: value.detach() for key, value in state_dict.items()}
            for key, value in first.items():
                if value.is_floating_point():
                    accumulate = torch.float64 if value.dtype == torch.float64 else torch.float32
                    totals[key] = value.to(accumulate, copy=True)
        else:
            missing = [key for key in first if key not in state_dict]
            extra = [key for key in state_dict if key not in first]
            if missing or extra:
                raise ValueError(
                    f"state dict {index} differs from state dict 0 in its keys: missing {missing[:3]}, extra "
                    f"{extra[:3]}; only models of the same architecture can be averaged."
                )
            for key, reference in first.items():
                value = state_dict[key].detach()
                if value.shape != reference.shape:
                    raise ValueError(
                        f"tensor {key!r} has shape {tuple(value.shape)} in state dict {index} but "
                        f"{tuple(reference.shape)} in state dict 0; only models of the same architecture can be averaged."
                    )
                if key in totals:
                    totals[key] += value.to(device=totals[key].device, dtype=totals[key].dtype)
                elif not torch.equal(value.to(reference.device), reference):
                    raise ValueError(
                        f"non-floating tensor {key!r} ({reference.dtype}) differs between state dict 0 and state dict "
                        f"{index}; integer buffers cannot be averaged."
                    )
        count += 1
    if count == 0:
        raise ValueError("average_state_dicts needs at least one state dict.")
    return {
        key: (totals[key] / count).to(reference.dtype) if key in totals else reference.clone()
        for key, reference in first.items()
    }


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
                    f"class {class_id} is {label_a!r} in {a} but {label_b!r} in {b} (id2label order differs; the classifier "
                    "rows would be mixed across classes)"
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


@torch.inference_mode()
def predict(model, features: Mapping[str, torch.Tensor], multi_label: bool, batch_size: int, device) -> torch.Tensor:
    """Scores `(N, C)` on CPU: sigmoid outputs (multi-label) or softmax probabilities."""
    model.to(device).eval()
    scores = []
    for start in range(0, len(features["input_values"]), batch_size):
        batch = {"input_values": features["input_values"][start : start + batch_size].to(device)}
        if "attention_mask" in features:
            batch["attention_mask"] = features["attention_mask"][start : start + batch_size].to(device)
        logits = model(**batch).logits.float()
        scores.append((logits.sigmoid() if multi_label else logits.softmax(dim=-1)).cpu())
    return torch.cat(scores)


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
) -> dict[str, dict] | None:
    """Average the weights of `model_dirs` into `output`; with `eval_features`, return and print a metrics table."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_compatible([HfAstConfig.from_pretrained(path) for path in model_dirs], names=list(model_dirs))
    features = load_eval_features(eval_features) if eval_features else None
    multi_label = features is not None and features["labels"].dim() == 2
    scores: dict[str, torch.Tensor] = {}

    container = HfAstForAudioClassification.from_pretrained(model_dirs[0])

    def state_dicts():
        # One model in memory at a time (plus the container); each is scored while loaded.
        for path in model_dirs:
            model = container if path == model_dirs[0] else HfAstForAudioClassification.from_pretrained(path)
            check_compatible([container, model], names=[model_dirs[0], path])
            if features is not None:
                scores[path] = predict(model, features, multi_label, batch_size, device)
            yield model.state_dict()

    averaged = average_state_dicts(state_dicts())
    container.load_state_dict(averaged)
    container.save_pretrained(output)
    try:
        HfAstFeatureExtractor.from_pretrained(model_dirs[0]).save_pretrained(output)
    except OSError:
        print(f"warning: {model_dirs[0]} has no feature extractor (preprocessor_config.json); none written to {output}")
    print(f"wrote the average of {len(model_dirs)} models to {output}")
    if features is None:
        return None

    if len(model_dirs) > 1:
        scores["ensemble"] = ensemble_predictions(list(scores.values()))
    scores["soup"] = predict(container, features, multi_label, batch_size, device)
    metric = load_audio_classification_metric(multi_label, keep_in_memory=True)
    labels = features["labels"]
    results = {name: metric.compute(predictions=s.numpy(), references=labels.numpy()) for name, s in scores.items()}
    columns = ["mAP", "mAUC", "d_prime"] if multi_label else ["accuracy", "top5_accuracy"]
    print(format_table(results, columns))
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hf_ast.averaging", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    soup_parser = commands.add_parser(
        "soup",
        help="average the weights of models of one architecture and label order",
        description="Average the weights of hf-ast models (same architecture, same labels, same initialisation).",
    )
    soup_parser.add_argument("model_dirs", nargs="+", help="saved HfAstForAudioClassification directories")
    soup_parser.add_argument("--output", required=True, help="directory for the averaged model")
    soup_parser.add_argument(
        "--eval-features",
        help="torch.save'd dict with input_values (N, T, F) and labels ((N, C) multi-hot or (N,) ids); "
        "prints each model, the ensemble and the soup",
    )
    soup_parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    soup_parser.add_argument("--device", help="torch device for evaluation (default: cuda if available)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.command == "soup":
        return soup(args.model_dirs, args.output, args.eval_features, args.batch_size, args.device)


if __name__ == "__main__":
    main()


__all__ = ["average_state_dicts", "check_compatible", "ensemble_predictions", "soup"]
