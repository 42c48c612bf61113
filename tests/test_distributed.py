"""examples/run_audioset.py on two processes: `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo).

On a machine without GPUs, Accelerate forms one gloo group (MULTI_CPU) only when told
ACCELERATE_USE_CPU=true; otherwise `--multi_gpu` starts two processes that each run alone (two full
copies of the run writing into one folder). The script asks for the CPU group itself when it finds
no GPU, so every test here checks that ranks 0 and 1 of 2 really ran, and one launches without
the variable.

Starting two processes costs about 15 s here, so one launch runs every scenario in turn
(tests/distributed_probe.py calls the script's `main` once per scenario and records, per rank,
the rows each process trained on, its optimizer steps, its gathered eval scores and a digest of
its final weights). Each test then reads its scenario's outputs. The launch runs under a
timeout: a collective that one rank skipped would hang it, not fail it.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import torch
from conftest import save_tiny_deit
from safetensors.torch import load_file

from hf_ast import HfAstFeatureExtractor, HfAstForAudioClassification
from hf_ast.training.metrics import load_audio_classification_metric
from hf_ast.training.sampling import SeededWeightedSampler
from hf_ast.training.synthetic import write_sound_events_audiofolder

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
LAUNCH_TIMEOUT_S = 300  # the whole plan takes about 20 s on 2 cores; a deadlock ends here
NUM_TRAIN, NUM_EVAL, NUM_CORRUPT = 32, 11, 4
SEED = 7
CORRUPT_WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4  # a wav header, then garbage


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_env(use_cpu: bool) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               ACCELERATE_USE_CPU="true" if use_cpu else "false")
    # The launched processes import this checkout's hf_ast, like the tests do.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def launch(program_args: list[str], use_cpu: bool = True) -> tuple[int | None, str]:
    """(exit status, or None when it ran past LAUNCH_TIMEOUT_S; stdout and stderr) of a 2-process launch."""
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               *program_args]
    process = subprocess.Popen(command, cwd=ROOT, env=launch_env(use_cpu), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        log = process.communicate(timeout=LAUNCH_TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        # torchrun puts every worker in a session of its own; on SIGTERM the launcher ends them itself.
        process.terminate()
        log = process.communicate(timeout=60)[0]
        return None, log + f"\n[test] the launch ran past {LAUNCH_TIMEOUT_S} s (a deadlock?) and was stopped"
    return process.returncode, log


def add_corrupt_clips(split_dir: Path, count: int, label: str = "tone") -> list[str]:
    """Garbage .wav files with metadata lines, so the dataset lists them like any other clip."""
    names = [f"corrupt_{i}.wav" for i in range(count)]
    with open(split_dir / "metadata.jsonl", "a", encoding="utf-8") as metadata:
        for name in names:
            (split_dir / name).write_bytes(CORRUPT_WAV)
            metadata.write(json.dumps({"file_name": name, "labels": [label]}) + "\n")
    return names


def split_rows(data_dir: Path, split: str) -> list[dict]:
    """The split's rows in the order the script sees them: {"path", "labels"}."""
    rows = datasets.load_dataset(str(data_dir))[split].cast_column("audio", datasets.Audio(decode=False))
    return [{"path": audio["path"], "labels": labels} for audio, labels in zip(rows["audio"], rows["labels"])]


def argv(data, deit, output, *extra):
    return [
        "--dataset_name", str(data), "--model_name_or_path", str(deit), "--output_dir", str(output),
        "--recipe", "none", "--max_length", "98", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--warmup_steps", "0", "--mixup", "0.5", "--freq_mask", "12", "--time_mask", "20", "--seed", str(SEED),
        "--no-balanced_sampling", "--weight_averaging_start_epoch", "0", "--num_train_epochs", "2",
        "--checkpointing_steps", "none", *extra,
    ]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """Data, a tiny DeiT, and one 2-process launch running every scenario; returns their folders and the log."""
    root = tmp_path_factory.mktemp("distributed")
    deit = save_tiny_deit(root / "deit")

    clean = write_sound_events_audiofolder(root / "clean", num_train=NUM_TRAIN, num_test=NUM_EVAL, seed=0,
                                           duration_s=1.0)
    data = {"clean": clean}
    for name in ("bad_train", "bad_train_abort", "bad_eval"):
        data[name] = Path(shutil.copytree(clean, root / name))
    corrupt = {name: add_corrupt_clips(data[name] / "train", NUM_CORRUPT) for name in ("bad_train", "bad_train_abort")}
    corrupt["bad_eval"] = add_corrupt_clips(data["bad_eval"] / "test", 1)

    out = {name: root / "runs" / name for name in
           ("main", "interrupted", "bad", "abort", "balanced", "bad_eval", "stream", "stream_straight",
            "stream_interrupted", "stream_bad")}
    label_list = str(clean / "class_labels_indices.csv")
    stream = ("--streaming", "--label_list", label_list, "--max_train_steps", "8")
    in_order = ("--shuffle_buffer_size", "0")  # a shuffle buffer is not part of a stream's state_dict
    scenarios = [
        # 32 clips, 4 per process and step: 4 steps per epoch on two processes (8 on one).
        argv(clean, deit, out["main"], "--checkpointing_steps", "3"),
        # The same run "killed" right after its checkpoint at step 3, then resumed from it. (Not --max_train_steps,
        # which would change the schedule the steps before it ran with.)
        {"argv": argv(clean, deit, out["interrupted"], "--checkpointing_steps", "3"), "die_after": "step_3"},
        argv(clean, deit, out["interrupted"], "--checkpointing_steps", "3", "--resume_from_checkpoint", "latest"),
        # One clip per process and step: a corrupt clip leaves its process a whole batch of nothing.
        argv(data["bad_train"], deit, out["bad"], "--per_device_train_batch_size", "1", "--num_train_epochs", "1",
             "--per_device_eval_batch_size", "4", "--max_bad_fraction", "0.2"),
        argv(data["bad_train_abort"], deit, out["abort"], "--per_device_train_batch_size", "2",
             "--num_train_epochs", "1", "--max_bad_fraction", "0.05"),
        # 24 clips drawn per epoch, 4 per process and batch, 2 batches per step: 3 batches per process and
        # epoch, so the last step of an epoch accumulates a single batch.
        argv(clean, deit, out["balanced"], "--balanced_sampling", "--max_train_samples", "24",
             "--gradient_accumulation_steps", "2"),
        # Streaming: both processes read one shuffled stream and keep their halves of each global batch.
        argv(clean, deit, out["stream"], *stream, "--checkpointing_steps", "3"),
        argv(clean, deit, out["stream_straight"], *stream, *in_order),
        {"argv": argv(clean, deit, out["stream_interrupted"], *stream, *in_order, "--checkpointing_steps", "3"),
         "die_after": "step_3"},
        argv(clean, deit, out["stream_interrupted"], *stream, *in_order, "--checkpointing_steps", "3",
             "--resume_from_checkpoint", "latest"),
        argv(data["bad_train"], deit, out["stream_bad"], *stream, *in_order, "--per_device_train_batch_size", "1",
             "--num_train_epochs", "1", "--max_train_steps", "100", "--max_bad_fraction", "0.2"),
        # Last: on a script that cannot evaluate a corrupt clip on two processes, the launch dies here.
        argv(data["bad_eval"], deit, out["bad_eval"], "--num_train_epochs", "1"),
    ]
    plan_file = root / "plan.json"
    plan_file.write_text(json.dumps(scenarios))
    returncode, log = launch([str(ROOT / "tests" / "distributed_probe.py"), str(plan_file)])
    (root / "launch.log").write_text(log)
    return {"data": data, "out": out, "corrupt": corrupt, "log": log, "returncode": returncode}


def ranks(plan, name, expect_error=False) -> list[dict]:
    """A scenario's two per-process records, once checked to come from ranks 0 and 1 of one 2-process group."""
    probe = plan["out"][name] / "probe"
    found = sorted(probe.glob("rank_*.json")) if probe.is_dir() else []
    assert [p.name for p in found] == ["rank_0.json", "rank_1.json"], (
        f"scenario {name!r}: expected records from ranks 0 and 1, found {[p.name for p in found]}; launch exit "
        f"{plan['returncode']}, log tail:\n{plan['log'][-3000:]}"
    )
    records = [json.loads(p.read_text()) for p in found]
    for index, record in enumerate(records):
        assert (record["process_index"], record["num_processes"]) == (index, 2)
        assert record["distributed_type"].endswith("MULTI_CPU")
        if not expect_error:
            assert record["error"] is None, f"rank {index}: {record['error']}"
    assert records[0]["pid"] != records[1]["pid"]
    return records


def single_process_scores(model_dir, rows) -> tuple[np.ndarray, np.ndarray]:
    """Scores and multi-hot targets of `rows`, in order, from the saved model and extractor in one process."""
    model = HfAstForAudioClassification.from_pretrained(model_dir).eval()
    extractor = HfAstFeatureExtractor.from_pretrained(model_dir)
    clips = [soundfile.read(row["path"], dtype="float32")[0] for row in rows]
    with torch.no_grad():
        features = extractor(clips, sampling_rate=16000, return_tensors="pt")
        scores = model(input_values=features["input_values"]).logits.sigmoid().numpy()
    targets = np.zeros(scores.shape, dtype=np.float32)
    for i, row in enumerate(rows):
        targets[i, [model.config.label2id[label] for label in row["labels"]]] = 1
    return scores, targets


def results(plan, name, file="all_results.json") -> dict:
    return json.loads((plan["out"][name] / file).read_text())


# -- two processes, one group ----------------------------------------------------------------------


def test_two_processes_split_the_data_and_keep_one_model(plan):
    records = ranks(plan, "main")
    # Each process saves its own random state into a checkpoint: one file per rank.
    checkpoint = plan["out"]["main"] / "checkpoints" / "step_6"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                             "random_states_1.pkl"]
    # 32 clips / (4 per batch x 2 processes) = 4 optimizer steps per epoch (8 on one process).
    assert [results(plan, "main", f"epoch_{e}_results.json")["step"] for e in (1, 2)] == [4, 8]
    for record in records:
        assert record["optimizer_steps"] == 8 and len(record["train_batches"]) == 8
        assert record["ddp_forward_calls"] > 0 and record["input_devices"] == ["cpu"]
    for epoch in range(2):
        seen = [[i for batch in r["train_batches"][4 * epoch: 4 * epoch + 4] for i in batch["rows"]] for r in records]
        assert len(seen[0]) == len(seen[1]) == 16 and not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(NUM_TRAIN))  # every clip once per epoch
    # The ranks trained on different clips and still hold the same weights: gradients were averaged.
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]


def test_gathered_evaluation_equals_one_process_evaluation_of_the_saved_model(plan):
    records = ranks(plan, "main")
    rows = split_rows(plan["data"]["clean"], "test")
    scores, targets = single_process_scores(plan["out"]["main"], rows)
    for record in records:
        # 11 clips at 4 per process: the last step pads, and gather_for_metrics drops the padding again.
        assert record["eval_rows"] == [NUM_EVAL, NUM_EVAL]
        np.testing.assert_allclose(np.array(record["last_eval_scores"]), scores, atol=1e-5, rtol=0)
    expected = load_audio_classification_metric(multi_label=True).compute(predictions=scores, references=targets)
    final = results(plan, "main")["final"]
    for key in ("mAP", "mAUC"):
        assert final[key] == pytest.approx(expected[key], abs=1e-6), key


def test_resumed_two_process_run_ends_with_the_uninterrupted_weights(plan):
    resumed = ranks(plan, "interrupted")  # the records of the resumed run (written after the interrupted one's)
    assert "--resume_from_checkpoint" in resumed[0]["argv"]
    assert "resumed from" in plan["log"] and "step 3, epoch 1" in plan["log"]
    assert [r["optimizer_steps"] for r in resumed] == [8 - 3, 8 - 3]  # steps 4..8, mid-epoch 1 onwards
    straight = load_file(plan["out"]["main"] / "model.safetensors")
    again = load_file(plan["out"]["interrupted"] / "model.safetensors")
    assert straight.keys() == again.keys()
    for name in straight:
        torch.testing.assert_close(again[name], straight[name], atol=1e-5, rtol=0, msg=name)
    assert results(plan, "interrupted")["final"]["mAP"] == pytest.approx(results(plan, "main")["final"]["mAP"],
                                                                         abs=1e-6)


# -- bad data --------------------------------------------------------------------------------------


def test_corrupt_training_clips_are_skipped_counted_and_logged_on_both_ranks(plan):
    records = ranks(plan, "bad")
    bad_per_rank = [sum(batch["num_bad"] for batch in r["train_batches"]) for r in records]
    # The scenario only tests something if both ranks meet a corrupt clip (true for SEED).
    assert sum(bad_per_rank) == NUM_CORRUPT and min(bad_per_rank) > 0, bad_per_rank
    # Batch size 1: every corrupt clip left its process a dummy batch, and no process waited forever on the other.
    assert sum(batch["dummy"] for r in records for batch in r["train_batches"]) == NUM_CORRUPT
    steps = (NUM_TRAIN + NUM_CORRUPT) // 2
    assert [r["optimizer_steps"] for r in records] == [steps, steps]
    assert results(plan, "bad", "epoch_1_results.json")["step"] == steps
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
    assert results(plan, "bad")["bad_clips_skipped"] == NUM_CORRUPT  # the total over both processes
    for name in plan["corrupt"]["bad_train"]:
        path = plan["data"]["bad_train"] / "train" / name
        assert any("skipping clip" in line and str(path) in line for line in plan["log"].splitlines()), name


def test_max_bad_fraction_stops_both_ranks_together(plan):
    records = ranks(plan, "abort", expect_error=True)
    # 36 clips a step of 2 x 2 at a time: as soon as 2 are bad, more than 5% of the epoch's 36 (1.8) are,
    # whatever the rest hold, and both ranks stop at the same batch.
    assert records[0]["error"] == records[1]["error"]
    error = records[0]["error"]
    assert error.startswith("RuntimeError") and "could not be decoded" in error and "--max_bad_fraction 0.05" in error
    assert re.search(r"[234] of the first \d+ training clips", error), error
    batches = [len(r["train_batches"]) for r in records]
    assert batches[0] == batches[1] and batches[0] < (NUM_TRAIN + NUM_CORRUPT) // 4, batches
    assert not (plan["out"]["abort"] / "all_results.json").exists()
    ranks(plan, "balanced")  # the next scenario ran: neither process was left waiting in a collective


def test_a_corrupt_eval_clip_is_left_out_of_the_gathered_metrics_and_counted_once(plan):
    records = ranks(plan, "bad_eval")
    rows = [row for row in split_rows(plan["data"]["bad_eval"], "test") if "corrupt" not in Path(row["path"]).name]
    scores, _ = single_process_scores(plan["out"]["bad_eval"], rows)
    # 12 clips at 4 per process: Accelerate repeats clips to even out the last step, and a repeated corrupt
    # clip must not be counted twice.
    assert results(plan, "bad_eval")["bad_eval_clips_skipped"] == 1
    for record in records:
        assert record["eval_rows"] == [NUM_EVAL] and record["eval_bad"] == [1]
        np.testing.assert_allclose(np.array(record["last_eval_scores"]), scores, atol=1e-5, rtol=0)


# -- balanced sampling -------------------------------------------------------------------------------


def test_balanced_sampling_shares_one_weighted_draw_between_the_ranks(plan):
    records = ranks(plan, "balanced")
    rows = split_rows(plan["data"]["clean"], "train")[:24]
    # The reference weights: label weight 1000 / (label count + 0.01), a clip's weight the sum over its labels.
    counts = Counter(label for row in rows for label in row["labels"])
    weights = [sum(1000 / (counts[label] + 0.01) for label in row["labels"]) for row in rows]
    draws = []
    for epoch in range(2):
        seen = [[i for batch in r["train_batches"][3 * epoch: 3 * epoch + 3] for i in batch["rows"]] for r in records]
        assert len(seen[0]) == len(seen[1]) == 12
        sampler = SeededWeightedSampler(weights, seed=SEED)
        sampler.set_epoch(epoch)
        draws.append(list(sampler))
        assert sorted(seen[0] + seen[1]) == sorted(draws[-1])  # together: exactly the epoch's draw
    assert draws[0] != draws[1]
    # 3 batches per process and epoch, 2 per step: steps end after batches 2 and 3 of every epoch.
    assert [results(plan, "balanced", f"epoch_{e}_results.json")["step"] for e in (1, 2)] == [2, 4]
    for record in records:
        assert record["optimizer_steps"] == 4
        assert record["ddp_forward_calls"] > 0 and record["input_devices"] == ["cpu"]
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]


# -- a launch that is not one group ----------------------------------------------------------------


def test_the_script_says_how_many_processes_train(plan):
    ranks(plan, "main")
    assert "2 process(es) (DistributedType.MULTI_CPU)" in plan["log"]


def test_multi_gpu_launch_without_gpus_forms_one_cpu_group_by_itself(plan, tmp_path):
    # `accelerate launch --multi_gpu` sets ACCELERATE_USE_CPU=false; without GPUs the script asks for a CPU
    # (gloo) group itself instead of letting two single-process copies train side by side.
    output = tmp_path / "alone"
    deit = plan["data"]["clean"].parent / "deit"
    returncode, log = launch([str(ROOT / "examples" / "run_audioset.py"),
                              *argv(plan["data"]["clean"], deit, output, "--num_train_epochs", "1")], use_cpu=False)
    assert returncode == 0, log[-3000:]
    assert "2 process(es) (DistributedType.MULTI_CPU)" in log
    assert json.loads((output / "epoch_1_results.json").read_text())["step"] == 4  # 32 clips / (4 x 2 processes)


# -- streaming ---------------------------------------------------------------------------------------


def test_streaming_ranks_share_each_shuffled_global_batch(plan):
    records = ranks(plan, "stream")
    train_files = sorted(row["path"] for row in split_rows(plan["data"]["clean"], "train"))
    orders = []
    for epoch in range(2):
        seen = [[path for batch in r["train_batches"][4 * epoch: 4 * epoch + 4] for path in batch["paths"]]
                for r in records]
        assert len(seen[0]) == len(seen[1]) == 16 and not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == train_files  # every clip once per epoch, none twice
        orders.append(seen[0])
    assert orders[0] != orders[1]  # the shuffle is re-seeded every epoch
    assert [results(plan, "stream", f"epoch_{e}_results.json")["step"] for e in (1, 2)] == [4, 8]
    for record in records:
        assert record["optimizer_steps"] == 8 and record["ddp_forward_calls"] > 0
        # 11 eval clips: the shard pads the last global batch to equal sizes; the padding is not scored.
        assert record["eval_rows"] == [NUM_EVAL, NUM_EVAL]
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
    rows = split_rows(plan["data"]["clean"], "test")
    scores, _ = single_process_scores(plan["out"]["stream"], rows)
    np.testing.assert_allclose(np.array(records[0]["last_eval_scores"]), scores, atol=1e-5, rtol=0)


def test_streaming_run_resumes_from_the_streams_state_dict(plan):
    resumed = ranks(plan, "stream_interrupted")
    assert "--resume_from_checkpoint" in resumed[0]["argv"]
    assert [r["optimizer_steps"] for r in resumed] == [8 - 3, 8 - 3]
    # Position 24 of epoch 1 (3 global batches of 8): the resumed run read on from there.
    assert [i for batch in resumed[0]["train_batches"][:1] for i in batch["rows"]] == [24, 25, 26, 27]
    straight = load_file(plan["out"]["stream_straight"] / "model.safetensors")
    again = load_file(plan["out"]["stream_interrupted"] / "model.safetensors")
    for name in straight:
        torch.testing.assert_close(again[name], straight[name], atol=1e-5, rtol=0, msg=name)
    assert results(plan, "stream_interrupted")["final"]["mAP"] == pytest.approx(
        results(plan, "stream_straight")["final"]["mAP"], abs=1e-6)


def test_streaming_skips_corrupt_clips_on_both_ranks_in_step(plan):
    records = ranks(plan, "stream_bad")
    bad_per_rank = [sum(batch["num_bad"] for batch in r["train_batches"]) for r in records]
    assert sum(bad_per_rank) == NUM_CORRUPT, bad_per_rank
    steps = (NUM_TRAIN + NUM_CORRUPT) // 2  # one pass over the stream, one clip per process and step
    assert [r["optimizer_steps"] for r in records] == [steps, steps]
    assert results(plan, "stream_bad")["bad_clips_skipped"] == NUM_CORRUPT
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
