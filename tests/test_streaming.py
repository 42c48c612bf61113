"""Streaming training data: hf_ast.training.streaming.StreamShard, and examples/run_audioset.py --streaming on one
process.

Two processes reading one stream are tested in tests/test_distributed.py.
"""

import json

import pytest
import torch
from conftest import load_script, save_tiny_deit
from datasets import Dataset

from hf_ast import HfAstFeatureExtractor
from hf_ast.labels import RowTargets
from hf_ast.training import AudioCollator
from hf_ast.training.streaming import ShardCollator, StreamShard
from hf_ast.training.synthetic import write_sound_events_audiofolder


def numbers(count=21, num_shards=3):
    return Dataset.from_dict({"x": list(range(count))}).to_iterable_dataset(num_shards=num_shards)


def read(shard, epoch=0, resume=None):
    shard.set_epoch(epoch, resume=resume)
    return list(shard)


# -- StreamShard -----------------------------------------------------------------------------------


def test_processes_split_every_global_batch_and_pad_the_last():
    shards = [StreamShard(numbers(), batch_size=4, num_processes=2, process_index=rank) for rank in (0, 1)]
    batches = [read(shard) for shard in shards]
    assert len(batches[0]) == len(batches[1]) == 3  # 21 examples in global batches of 8: 8, 8, 5
    for step in range(3):
        rows = [batches[rank][step][0] for rank in (0, 1)]
        assert len(rows[0]) == len(rows[1])  # equal sizes, so tensors can be gathered
        real = [[row["x"] for row in part if not row.get("_padding")] for part in rows]
        start = 8 * step
        assert sorted(real[0] + real[1]) == list(range(start, min(start + 8, 21)))
        # Contiguous slices: rank 0's rows, then rank 1's, are the stream order (what a gather returns).
        assert real[0] + real[1] == list(range(start, min(start + 8, 21)))
        assert [row["_index"] for row in rows[0] if not row.get("_padding")] == real[0]
        # Both processes report the same stream position after each global batch.
        assert batches[0][step][1]["position"] == batches[1][step][1]["position"] == min(start + 8, 21)
    last = batches[1][2][0]
    assert [row.get("_padding", False) for row in last] == [False, False, True]  # 5 = 3 + (2 + 1 padding)


def test_a_resumed_stream_continues_where_the_state_was_taken():
    straight = read(StreamShard(numbers(), batch_size=3))
    state = straight[2][1]  # after 9 examples
    resumed = read(StreamShard(numbers(), batch_size=3), resume=state)
    assert [[row["x"] for row in rows] for rows, _ in resumed] == [[row["x"] for row in rows] for rows, _ in
                                                                   straight[3:]]
    assert resumed[0][0][0]["_index"] == 9
    with pytest.raises(ValueError, match="epoch 0, not 1"):
        StreamShard(numbers(), batch_size=3).set_epoch(1, resume=state)


def test_a_shuffled_stream_is_the_same_on_every_process_and_new_every_epoch():
    def order(rank, epoch):
        shard = StreamShard(numbers().shuffle(seed=5, buffer_size=8), batch_size=2, num_processes=2,
                            process_index=rank)
        return [row["x"] for rows, _ in read(shard, epoch) for row in rows if not row.get("_padding")]

    for epoch in (0, 1):
        together = order(0, epoch) + order(1, epoch)
        assert sorted(together) == list(range(21))  # the processes' shares never overlap
    assert order(0, 0) != order(0, 1)


def test_bad_labels_raise_while_reading_on_every_process():
    targets = RowTargets("label", {"a": 0, "b": 1})
    stream = Dataset.from_dict({"label": ["a", "b", "a", "c"]}).to_iterable_dataset()
    for rank in (0, 1):  # row 3 belongs to rank 1, and rank 0 raises too
        shard = StreamShard(stream, batch_size=2, num_processes=2, process_index=rank, check_row=targets.check)
        with pytest.raises(ValueError, match="streamed example 3.*'c'"):
            read(shard)


def test_shard_collator_computes_targets_from_rows_and_drops_padding(tmp_path):
    targets = RowTargets("labels", {"dog": 0, "cat": 1, "bird": 2})
    clip = {"array": torch.randn(16000).numpy() * 0.1, "sampling_rate": 16000}
    rows = [{"audio": clip, "labels": ["dog", "bird"], "_index": 0},
            {"audio": clip, "labels": ["cat"], "_index": 1, "_padding": True}]
    extractor = HfAstFeatureExtractor(max_length=128)
    train = ShardCollator(AudioCollator(extractor, "audio", targets, train=True))((rows, {"position": 2}))
    assert train["labels"].tolist() == [[1.0, 0.0, 1.0]] and train["num_clips"] == 1 and train["num_bad"] == 0
    assert train["stream_state"] == {"position": 2}
    evaluation = AudioCollator(extractor, "audio", targets, train=False, keep_bad_rows=True)(rows)
    assert evaluation["valid"].tolist() == [True, False] and evaluation["num_bad"] == 0
    assert evaluation["labels"].shape == (2, 3)


# -- the script --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    data = write_sound_events_audiofolder(root / "data", num_train=48, num_test=16, seed=1, duration_s=1.0)
    return data, save_tiny_deit(root / "deit")


def stream_argv(data, deit, output, *extra):
    return [
        "--dataset_name", str(data), "--model_name_or_path", str(deit), "--output_dir", str(output),
        "--recipe", "none", "--max_length", "98", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
        "--warmup_steps", "0", "--mixup", "0", "--seed", "5", "--no-balanced_sampling",
        "--weight_averaging_start_epoch", "0", "--streaming", "--label_list",
        str(data / "class_labels_indices.csv"), *extra,
    ]


def test_streaming_run_trains_evaluates_and_saves(stream_setup, tmp_path):
    data, deit = stream_setup
    output = tmp_path / "run"
    # 48 clips, 8 per step: the third epoch is cut by --max_train_steps after 1 of its 6 steps.
    results = load_script().main(stream_argv(data, deit, output, "--max_train_steps", "13", "--num_train_epochs", "5",
                                             "--lr_scheduler_type", "step", "--lr_decay_start_epoch", "2",
                                             "--lr_decay_every", "1", "--lr_decay_gamma", "0.5"))
    records = [json.loads((output / f"epoch_{e}_results.json").read_text()) for e in (1, 2, 3)]
    assert [r["step"] for r in records] == [6, 12, 13]
    assert not (output / "epoch_4_results.json").exists()
    # The step decay follows the stream's epochs (MultiStepLR(range(2, ...)) stepped after each epoch): the
    # last steps of epochs 1 and 2 ran at 1e-3, the first of epoch 3 already at 5e-4, the second too.
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 1e-3, 5e-4])
    assert 0 < results["final"]["mAP"] <= 1 and results["bad_clips_skipped"] == 0
    assert (output / "model.safetensors").exists() and (output / "training_curves.png").exists()


def test_streaming_refuses_what_needs_the_whole_split(stream_setup, tmp_path, capsys):
    data, deit = stream_setup
    script = load_script()
    base = stream_argv(data, deit, tmp_path / "x")
    cases = [
        (["--max_train_steps", "4", "--balanced_sampling"], "--no-balanced_sampling"),
        (["--max_train_steps", "4", "--recipe", "audioset"], "'audioset' recipe turns it on"),
        (["--max_train_steps", "4", "--validation_fraction", "0.2"], "--eval_split or --eval_fold"),
        ([], "--streaming needs --max_train_steps"),
        (["--max_train_steps", "4", "--preprocessing_num_workers", "2"], "--preprocessing_num_workers 0 or 1"),
        (["--max_train_steps", "4", "--compute_norm_stats"], "--max_train_samples N"),
    ]
    for extra, message in cases:
        argv = base + extra
        if "--recipe" in extra:  # the recipe's own balanced sampling, not switched off
            argv.remove("--no-balanced_sampling")
        with pytest.raises(SystemExit):
            script.parse_args(argv)
        assert message in capsys.readouterr().err, extra


def test_streaming_needs_a_label_list_when_labels_are_not_class_labels(stream_setup, tmp_path):
    data, deit = stream_setup
    argv = stream_argv(data, deit, tmp_path / "x", "--max_train_steps", "2")
    argv = argv[: argv.index("--label_list")] + argv[argv.index("--label_list") + 2:]
    with pytest.raises(ValueError, match="pass --label_list"):
        load_script().main(argv)


def test_streaming_label_missing_from_the_list_names_the_example(stream_setup, tmp_path):
    data, deit = stream_setup
    lines = (data / "class_labels_indices.csv").read_text().splitlines()
    short = tmp_path / "labels.csv"
    short.write_text("\n".join(lines[:-1]) + "\n")  # the last class is missing
    argv = stream_argv(data, deit, tmp_path / "x", "--max_train_steps", "6")
    argv[argv.index("--label_list") + 1] = str(short)
    with pytest.raises(ValueError, match="streamed example \\d+: .*not among the 7 known labels"):
        load_script().main(argv)


def test_parquet_files_train_in_memory_and_streamed(stream_setup, tmp_path):
    """A folder of parquet files with embedded audio (how large sets are shared on the Hub) trains both ways."""
    from datasets import load_dataset

    data, deit = stream_setup
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    for split, dataset in load_dataset(str(data)).items():
        dataset.to_parquet(str(parquet / f"{split}.parquet"))  # the wav bytes are embedded
    for extra in ([], ["--streaming"]):
        argv = stream_argv(parquet, deit, tmp_path / f"run{len(extra)}", "--max_train_steps", "2",
                           "--num_train_epochs", "1", "--max_eval_samples", "8")
        argv[argv.index("--label_list") + 1] = str(data / "class_labels_indices.csv")
        if not extra:
            argv.remove("--streaming")
        results = load_script().main(argv)
        assert results["bad_clips_skipped"] == 0 and 0 < results["final"]["mAP"] <= 1
        assert results["final"]["step"] == 2
