"""Evaluation metrics shipped with hf-ast as `evaluate` modules, loadable offline from their path.

`evaluate.load("accuracy")` fetches a script from the Hub; these modules live in the package, so
`evaluate.load(AUDIO_CLASSIFICATION_METRIC_PATH, "multilabel")` (or the helper below) needs no
network. `evaluate` is imported only when a metric is loaded.
"""

from pathlib import Path

# The directory holding `audio_classification.py`; evaluate accepts the directory or the file.
AUDIO_CLASSIFICATION_METRIC_PATH = str(Path(__file__).parent / "audio_classification")


def load_audio_classification_metric(multi_label: bool, **kwargs):
    """The audio-classification metric: mAP / mAUC / d' (`multi_label=True`) or accuracy / top-5.

    Multi-label: `compute(predictions=(N, C) scores, references=(N, C) multi-hot)`; single-label:
    `compute(predictions=(N, C) scores, references=(N,) class ids)`. `kwargs` go to
    `evaluate.load`. Predictions are kept in memory by default (`keep_in_memory=True`): the usual
    call computes on arrays already gathered across processes, and no cache files or file locks
    are then shared between processes; pass `keep_in_memory=False` for evaluate's own
    distributed mode (`num_process`, `process_id`).
    """
    import evaluate

    config_name = "multilabel" if multi_label else "single_label"
    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(AUDIO_CLASSIFICATION_METRIC_PATH, config_name, **kwargs)


__all__ = ["AUDIO_CLASSIFICATION_METRIC_PATH", "load_audio_classification_metric"]
