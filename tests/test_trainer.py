"""transformers' `Trainer` fits an hf-ast model, with `hf_ast.training.AudioCollator` building the batches."""

import numpy as np
import pytest
import torch
from conftest import TINY
from datasets import Audio, Dataset
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, Trainer, TrainingArguments

from hf_ast import HfAstConfig, HfAstFeatureExtractor, HfAstForAudioClassification
from hf_ast.training import AudioCollator

SAMPLING_RATE = 16000
SECONDS = 0.5  # 8000 samples = 48 Kaldi frames (25 ms windows every 10 ms): max_length 48, no padding
MAX_LENGTH = 48
LABELS = {0: "noise", 1: "tone"}


def tone_or_noise(count: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Alternating clips: white noise (0) or one sinusoid of random pitch (1), at random gains."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * SAMPLING_RATE)) / SAMPLING_RATE
    clips, labels = [], []
    for index in range(count):
        label = index % 2
        if label:
            clip = np.sin(2 * np.pi * rng.uniform(200, 4000) * t + rng.uniform(0, 2 * np.pi))
        else:
            clip = rng.standard_normal(t.size)
        clip = rng.uniform(0.05, 0.5) * clip / np.abs(clip).max() + 0.002 * rng.standard_normal(t.size)
        clips.append(clip.astype(np.float32))
        labels.append(label)
    return clips, labels


@pytest.fixture(scope="module")
def data():
    """64 training and 32 held-out clips (other seed, so other pitches and gains) in one Dataset.

    AudioCollator looks targets up by the row's `_index`, and Trainer has one collator for training
    and evaluation, so both splits index one targets tensor.
    """
    train_clips, train_labels = tone_or_noise(64, seed=0)
    eval_clips, eval_labels = tone_or_noise(32, seed=1)
    labels = train_labels + eval_labels
    dataset = Dataset.from_dict(
        {"audio": [{"array": c, "sampling_rate": SAMPLING_RATE} for c in train_clips + eval_clips],
         "label": labels, "_index": list(range(len(labels)))},
    ).cast_column("audio", Audio(sampling_rate=SAMPLING_RATE))
    # As in run_audioset.py: the collator decodes (wav bytes -> torchcodec) and skips bad clips.
    dataset = dataset.cast_column("audio", Audio(decode=False))
    targets = torch.nn.functional.one_hot(torch.tensor(labels), len(LABELS)).float()  # (N, 2)
    return dataset.select(range(64)), dataset.select(range(64, 96)), targets


def make_trainer(data, output_dir, seed=0, **overrides) -> Trainer:
    train_set, eval_set, targets = data
    # problem_type explicit: the collator's one-hot float targets go to (soft-target) cross-entropy.
    config = HfAstConfig(**{**TINY, "max_length": MAX_LENGTH}, id2label=LABELS,
                         label2id={v: k for k, v in LABELS.items()}, problem_type="single_label_classification")
    torch.manual_seed(seed)
    model = HfAstForAudioClassification(config)
    extractor = HfAstFeatureExtractor(max_length=MAX_LENGTH)
    collator = AudioCollator(extractor, "audio", targets, train=False)

    def model_inputs(rows):
        # What run_audioset.py feeds the model. `valid` and `num_bad` are the script's bookkeeping; the
        # model's **kwargs would carry them, unused, down to the attention function.
        batch = collator(rows)
        return {"input_values": batch["input_values"], "labels": batch["labels"]}

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids.argmax(-1)).mean())}

    args = dict(output_dir=str(output_dir), max_steps=20, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                learning_rate=1e-3, warmup_steps=0, logging_steps=5, report_to=[], use_cpu=True, save_strategy="no",
                remove_unused_columns=False, seed=seed, disable_tqdm=True, dataloader_pin_memory=False)
    return Trainer(model=model, args=TrainingArguments(**{**args, **overrides}), train_dataset=train_set,
                   eval_dataset=eval_set, data_collator=model_inputs, processing_class=extractor,
                   compute_metrics=accuracy)


def test_trainer_learns_tone_versus_noise_and_the_saved_model_reloads(data, tmp_path):
    trainer = make_trainer(data, tmp_path / "out")
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()

    losses = [record["loss"] for record in trainer.state.log_history if "loss" in record]
    assert len(losses) == 4 and losses[-1] < 0.6 * losses[0], losses  # measured: 0.44 -> 0.21
    assert after["eval_loss"] < 0.5 * before["eval_loss"], (before, after)  # measured: 0.65 -> 0.20
    # Tone against white noise is easy: held-out clips (unseen pitches and gains) must be nearly all
    # right, far above the 0.5 of chance with two balanced classes.
    assert after["eval_accuracy"] >= 0.9, after

    trainer.save_model()
    reloaded = AutoModelForAudioClassification.from_pretrained(tmp_path / "out").eval()
    extractor = AutoFeatureExtractor.from_pretrained(tmp_path / "out")
    assert isinstance(reloaded, HfAstForAudioClassification) and isinstance(extractor, HfAstFeatureExtractor)
    assert reloaded.config.problem_type == "single_label_classification" and reloaded.config.id2label == LABELS
    clip = tone_or_noise(2, seed=5)[0][1]
    features = extractor(clip, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    trained = trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**features).logits, trained(**features).logits)
        assert reloaded(**features).logits.argmax(-1).item() == 1  # the tone


def test_gradient_accumulation_takes_the_same_step_as_one_big_batch(data, tmp_path):
    # Plain SGD, no clipping, one optimizer step over the same 8 clips: 2 x 4 accumulated must equal 1 x 8.
    steps = {}
    for accumulation, batch_size in ((1, 8), (2, 4)):
        trainer = make_trainer(data, tmp_path / f"ga{accumulation}", max_steps=1, logging_steps=1, optim="sgd",
                               max_grad_norm=0.0, per_device_train_batch_size=batch_size,
                               gradient_accumulation_steps=accumulation)
        trainer.train()
        steps[accumulation] = (trainer.state.log_history[0]["loss"], dict(trainer.model.named_parameters()))
    assert steps[2][0] == pytest.approx(steps[1][0], rel=1e-5)  # measured without the fix: twice as large
    for name, parameter in steps[1][1].items():
        torch.testing.assert_close(steps[2][1][name], parameter, rtol=1e-5, atol=1e-6, msg=name)
