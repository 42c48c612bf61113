"""Audio-classification metrics of the AST paper (Gong, Chung & Glass 2021), as an `evaluate` module.

Two configurations, chosen with `evaluate.load(path, config_name)`:

- `"multilabel"` (AudioSet): `predictions` are per-class scores `(N, C)` (sigmoid outputs; any
  monotonic score gives the same result), `references` multi-hot `(N, C)`. Returns `mAP`, the
  mean over classes of scikit-learn's average precision, `mAUC`, the mean per-class ROC AUC, and
  `d_prime = norm.ppf(mAUC) * sqrt(2)`, the numbers the reference implementation (YuanGongND/ast,
  `utilities/stats.py`) and the paper report. A class whose references are all negative or all
  positive has no defined ROC AUC (and no meaningful AP), so it is left out of both means; the
  result says how many classes were scored (`num_classes_scored`) and left out
  (`num_classes_excluded`) instead of averaging in NaN.
- `"single_label"` (ESC-50, Speech Commands): `predictions` are scores or logits `(N, C)`,
  `references` class ids `(N,)`. Returns `accuracy` (argmax, as the reference) and
  `top5_accuracy` (top-min(5, C)).

The module needs only numpy: average precision and ROC AUC are computed here with
scikit-learn's definitions (non-interpolated AP with tied scores sharing one threshold; AUC with
ties counting one half), and the normal quantile comes from the standard library, so loading it
works offline and without scikit-learn or scipy.
"""

import math
from statistics import NormalDist

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Metrics of the Audio Spectrogram Transformer paper. `multilabel`: mean average precision (mAP),
mean ROC AUC (mAUC) and d-prime over classes, from per-class scores and multi-hot references;
classes without both positive and negative references are excluded and counted. `single_label`:
top-1 (argmax) and top-5 accuracy from per-class scores and class ids.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: `(N, C)` per-class scores. Multi-label: sigmoid outputs (or logits: every
        per-class metric here depends only on the order of the scores). Single-label: logits or
        probabilities.
    references: multi-label: `(N, C)` multi-hot targets of 0 and 1; single-label: `(N,)` class ids.
    return_per_class (`bool`, multi-label only, defaults to `False`): also return
        `AP_per_class` and `AUC_per_class`, lists of `C` floats with NaN for excluded classes.
Returns:
    multilabel: `mAP`, `mAUC`, `d_prime`, `num_classes_scored`, `num_classes_excluded`.
    single_label: `accuracy`, `top5_accuracy`.
Examples:
    >>> metric = evaluate.load("hf_ast/metrics/audio_classification", "multilabel")
    >>> scores = [[0.9, 0.2], [0.1, 0.8], [0.6, 0.3], [0.4, 0.5]]
    >>> metric.compute(predictions=scores, references=[[1, 0], [0, 1], [0, 1], [1, 0]])
    {'mAP': 0.833..., 'mAUC': 0.75, 'd_prime': 0.953..., 'num_classes_scored': 2, 'num_classes_excluded': 0}
"""

_CITATION = """
@inproceedings{gong21b_interspeech,
  author={Yuan Gong and Yu-An Chung and James Glass},
  title={{AST: Audio Spectrogram Transformer}},
  year=2021,
  booktitle={Proc. Interspeech 2021},
  pages={571--575},
}
"""

CONFIGS = ("multilabel", "single_label")
TOP_K = 5


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class: `sum_k (R_k - R_{k-1}) * P_k` over score thresholds, `(N,)` inputs.

    scikit-learn's `average_precision_score`: no interpolation; samples with equal scores are one
    threshold, so a tie group enters with the precision at its end. Written as `1/P * sum over
    positives of the precision at the end of their tie group`, which is the same sum.
    """
    order = np.argsort(-scores, kind="stable")
    scores, y_true = scores[order], y_true[order]
    true_positives = np.cumsum(y_true)  # (N,) positives among the top i + 1
    # Last index of each sample's tie group: the next index (from the right) whose score changes.
    is_group_end = np.append(scores[1:] != scores[:-1], True)
    end_index = np.where(is_group_end, np.arange(len(scores)), len(scores))
    group_end = np.minimum.accumulate(end_index[::-1])[::-1]  # (N,)
    precision_at_end = true_positives[group_end] / (group_end + 1)
    return float(np.sum(precision_at_end * y_true) / true_positives[-1])


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one class from ranks (Mann-Whitney U), `(N,)` inputs; ties count one half.

    Equal to scikit-learn's trapezoidal `roc_auc_score`: the probability that a random positive
    scores above a random negative, with tied pairs counting 1/2 (average ranks).
    """
    unique, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based mean rank of each distinct score
    ranks = average_rank[inverse]
    positives = y_true.sum()
    negatives = len(y_true) - positives
    return float((ranks[y_true == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def d_prime(auc: float) -> float:
    """Sensitivity index `norm.ppf(auc) * sqrt(2)`: the separation of two unit-variance normals with this AUC."""
    if auc >= 1.0:
        return math.inf  # scipy's norm.ppf(1) is inf; NormalDist refuses 0 and 1
    if auc <= 0.0:
        return -math.inf
    return NormalDist().inv_cdf(auc) * math.sqrt(2.0)


def multilabel_metrics(predictions, references, return_per_class: bool = False) -> dict:
    scores = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(references, dtype=np.float64)
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(
            f"multilabel metrics need predictions and references of the same shape (N, num_classes); got "
            f"{scores.shape} and {targets.shape}. For class-id references use the 'single_label' config."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("predictions contain NaN or inf; check the model outputs before computing metrics.")
    if not np.all((targets == 0) | (targets == 1)):
        raise ValueError(
            "multilabel references must be multi-hot (0 or 1); got other values. Evaluate on clean labels, "
            "not on mixup targets."
        )
    num_positive = targets.sum(axis=0)  # (C,)
    scored = (num_positive > 0) & (num_positive < len(targets))
    ap = np.full(scores.shape[1], np.nan)
    auc = np.full(scores.shape[1], np.nan)
    for c in np.flatnonzero(scored):
        ap[c] = average_precision(targets[:, c], scores[:, c])
        auc[c] = roc_auc(targets[:, c], scores[:, c])
    num_scored = int(scored.sum())
    if num_scored:
        mean_ap, mean_auc = float(np.mean(ap[scored])), float(np.mean(auc[scored]))
        d = d_prime(mean_auc)
    else:  # not silent: num_classes_scored says 0, and the values are NaN
        mean_ap = mean_auc = d = math.nan
    result = {
        "mAP": mean_ap,
        "mAUC": mean_auc,
        "d_prime": d,
        "num_classes_scored": num_scored,
        "num_classes_excluded": int(scores.shape[1] - num_scored),
    }
    if return_per_class:
        result["AP_per_class"] = ap.tolist()
        result["AUC_per_class"] = auc.tolist()
    return result


def single_label_metrics(predictions, references) -> dict:
    scores = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(references)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"single_label metrics need predictions (N, num_classes) and class-id references (N,); got "
            f"{scores.shape} and {labels.shape}. For multi-hot references use the 'multilabel' config."
        )
    num_classes = scores.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"references must be class ids in [0, {num_classes}); got values from {labels.min()} to {labels.max()}."
        )
    # A stable sort of the negated scores keeps the lower class id first among ties, so top-1 is argmax.
    ranking = np.argsort(-scores, axis=1, kind="stable")  # (N, C)
    k = min(TOP_K, num_classes)
    top_k_hit = (ranking[:, :k] == labels[:, None]).any(axis=1)
    return {
        "accuracy": float(np.mean(ranking[:, 0] == labels)),
        "top5_accuracy": float(np.mean(top_k_hit)),
    }


class AudioClassification(evaluate.Metric):
    def _info(self):
        if self.config_name not in CONFIGS:
            raise ValueError(
                f"config_name={self.config_name!r}; pass 'multilabel' (multi-hot references, e.g. AudioSet) or "
                "'single_label' (class-id references, e.g. ESC-50, Speech Commands), e.g. "
                "evaluate.load(path, 'multilabel')."
            )
        if self.config_name == "multilabel":
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("float32")),
                }
            )
        else:
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=["https://arxiv.org/abs/2104.01778", "https://github.com/YuanGongND/ast"],
        )

    def _compute(self, predictions, references, return_per_class: bool = False):
        if self.config_name == "multilabel":
            return multilabel_metrics(predictions, references, return_per_class=return_per_class)
        if return_per_class:
            raise ValueError("return_per_class applies to the 'multilabel' config only.")
        return single_label_metrics(predictions, references)
