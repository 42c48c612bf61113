"""The audio-classification metric module: hand-computed values, scikit-learn parity, offline loading."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from hf_ast.training.metrics import AUDIO_CLASSIFICATION_METRIC_PATH, load_audio_classification_metric


@pytest.fixture(scope="module")
def multilabel():
    return load_audio_classification_metric(multi_label=True, keep_in_memory=True)


@pytest.fixture(scope="module")
def single_label():
    return load_audio_classification_metric(multi_label=False, keep_in_memory=True)


def test_hand_computed_average_precision_and_auc(multilabel):
    # Class 0, no ties. Ranked: + - + + -, precision at each positive 1/1, 2/3, 3/4.
    # AP = (1 + 2/3 + 3/4) / 3 = 29/36; AUC: positive-over-negative pairs 2 + 1 + 1 of 3 * 2 = 2/3.
    # Class 1, scores 0.7 tied between a positive and a negative. Thresholds 0.9: P 0/1, R 0;
    # 0.7: P 1/3, R 1/2; 0.4: P 2/4, R 1 -> AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12.
    # AUC: positive 0.7 beats 0.2, ties 0.7 (1/2), loses to 0.9; positive 0.4 beats 0.2 -> 2.5 / 6.
    scores = np.array([[0.9, 0.9], [0.8, 0.7], [0.7, 0.7], [0.6, 0.4], [0.5, 0.2]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [1, 1], [0, 0]])
    result = multilabel.compute(predictions=scores, references=targets, return_per_class=True)

    assert result["AP_per_class"] == pytest.approx([29 / 36, 5 / 12])
    assert result["AUC_per_class"] == pytest.approx([2 / 3, 5 / 12])
    assert result["mAP"] == pytest.approx((29 / 36 + 5 / 12) / 2)
    mean_auc = (2 / 3 + 5 / 12) / 2
    assert result["mAUC"] == pytest.approx(mean_auc)
    assert result["d_prime"] == pytest.approx(norm.ppf(mean_auc) * math.sqrt(2))
    assert result["num_classes_scored"] == 2 and result["num_classes_excluded"] == 0


def test_agrees_with_scikit_learn_on_random_data(multilabel):
    rng = np.random.default_rng(0)
    num_samples, num_classes = 300, 9
    # Rounded scores create many ties; float32 because evaluate stores predictions as float32.
    scores = np.round(rng.random((num_samples, num_classes)), 2).astype(np.float32)
    targets = (rng.random((num_samples, num_classes)) < np.linspace(0.02, 0.5, num_classes)).astype(np.int64)
    # Make the scores informative so AP is far from the base rate.
    scores = np.clip(scores + 0.3 * targets, 0, 1).astype(np.float32)

    result = multilabel.compute(predictions=scores, references=targets, return_per_class=True)

    expected_ap = [average_precision_score(targets[:, c], scores[:, c]) for c in range(num_classes)]
    expected_auc = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(num_classes)]
    np.testing.assert_allclose(result["AP_per_class"], expected_ap, rtol=1e-10)
    np.testing.assert_allclose(result["AUC_per_class"], expected_auc, rtol=1e-10)
    assert result["mAP"] == pytest.approx(np.mean(expected_ap), rel=1e-10)
    assert result["mAUC"] == pytest.approx(np.mean(expected_auc), rel=1e-10)
    assert result["d_prime"] == pytest.approx(norm.ppf(np.mean(expected_auc)) * math.sqrt(2), rel=1e-9)


def test_batches_accumulate(multilabel):
    rng = np.random.default_rng(1)
    scores = rng.random((40, 4)).astype(np.float32)
    targets = (rng.random((40, 4)) < 0.3).astype(np.int64)
    targets[0] = 1  # every class has a positive
    for start in range(0, 40, 16):
        multilabel.add_batch(predictions=scores[start : start + 16], references=targets[start : start + 16])
    batched = multilabel.compute()
    assert batched == multilabel.compute(predictions=scores, references=targets)


def test_classes_without_positives_or_negatives_are_excluded_and_counted(multilabel):
    scores = np.array([[0.9, 0.1, 0.3, 0.8], [0.2, 0.7, 0.6, 0.1], [0.4, 0.5, 0.2, 0.3]])
    targets = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 0]])  # class 1: no positive; class 2: all positive
    result = multilabel.compute(predictions=scores, references=targets, return_per_class=True)

    assert result["num_classes_scored"] == 2 and result["num_classes_excluded"] == 2
    assert np.isnan(result["AP_per_class"][1]) and np.isnan(result["AP_per_class"][2])
    assert np.isnan(result["AUC_per_class"][1]) and np.isnan(result["AUC_per_class"][2])
    # Class 0: the positive ranks first (AP 1, AUC 1). Class 3: the positive (0.1) ranks last of 3:
    # precision 1/3, AP 1/3, AUC 0.
    assert result["mAP"] == pytest.approx((1 + 1 / 3) / 2)
    assert result["mAUC"] == pytest.approx(0.5)
    assert result["d_prime"] == pytest.approx(0.0, abs=1e-12)

    none_scored = multilabel.compute(predictions=scores[:, 1:3], references=targets[:, 1:3])
    assert none_scored["num_classes_scored"] == 0 and none_scored["num_classes_excluded"] == 2
    assert math.isnan(none_scored["mAP"]) and math.isnan(none_scored["mAUC"]) and math.isnan(none_scored["d_prime"])


def test_d_prime_of_perfect_and_inverted_rankings(multilabel):
    targets = np.array([[1], [1], [0], [0]])
    perfect = multilabel.compute(predictions=[[0.9], [0.8], [0.2], [0.1]], references=targets)
    assert perfect["mAUC"] == 1.0 and perfect["d_prime"] == math.inf == norm.ppf(1.0) * math.sqrt(2)
    inverted = multilabel.compute(predictions=[[0.1], [0.2], [0.8], [0.9]], references=targets)
    assert inverted["mAUC"] == 0.0 and inverted["d_prime"] == -math.inf


def test_multilabel_rejects_soft_references_and_nan_scores(multilabel):
    with pytest.raises(ValueError, match="multi-hot"):
        multilabel.compute(predictions=[[0.2, 0.3], [0.5, 0.1]], references=[[0.7, 0.3], [0.0, 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        multilabel.compute(predictions=[[float("nan"), 0.3], [0.5, 0.1]], references=[[1, 0], [0, 1]])


def test_single_label_accuracy_and_top5(single_label):
    scores = np.array(
        [
            [0.0, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 1: top-1
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # label 4: 5th highest -> top-5 only
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # label 5: 6th highest -> neither
            [0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1],  # label 1: tied with class 0, argmax takes 0 -> top-5 only
        ]
    )
    result = single_label.compute(predictions=scores, references=[1, 4, 5, 1])
    assert result == {"accuracy": pytest.approx(1 / 4), "top5_accuracy": pytest.approx(3 / 4)}

    # Fewer than five classes: top-5 is top-C, always a hit.
    three = single_label.compute(predictions=[[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], references=[0, 2])
    assert three == {"accuracy": 0.5, "top5_accuracy": 1.0}


def test_single_label_rejects_out_of_range_ids(single_label):
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        single_label.compute(predictions=[[0.1, 0.9]], references=[2])


def test_unknown_config_name_is_refused():
    import evaluate

    with pytest.raises(ValueError, match="'multilabel'.*'single_label'"):
        evaluate.load(AUDIO_CLASSIFICATION_METRIC_PATH, "binary", keep_in_memory=True)


def test_evaluate_load_from_path_offline(tmp_path):
    # A fresh process with the Hub off and empty caches: the module must come from the package alone.
    script = f"""
import json, evaluate
directory = {AUDIO_CLASSIFICATION_METRIC_PATH!r}
by_dir = evaluate.load(directory, "multilabel", keep_in_memory=True)
by_file = evaluate.load(directory + "/audio_classification.py", "single_label", keep_in_memory=True)
print(json.dumps([
    by_dir.compute(predictions=[[0.9], [0.1], [0.6]], references=[[1], [0], [0]]),
    by_file.compute(predictions=[[0.2, 0.8], [0.6, 0.4]], references=[1, 1]),
]))
"""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    multi, single = json.loads(completed.stdout.strip().splitlines()[-1])
    assert multi["mAP"] == 1.0 and multi["mAUC"] == 1.0 and multi["num_classes_scored"] == 1
    assert single == {"accuracy": 0.5, "top5_accuracy": 1.0}
