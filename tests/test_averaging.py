"""Weight averaging, compatibility checks, ensembles, and the `soup` CLI on tiny models."""

import json

import numpy as np
import pytest
import soundfile
import torch
from conftest import tiny_model
from sklearn.metrics import average_precision_score

from hf_ast import HfAstFeatureExtractor, HfAstForAudioClassification
from hf_ast.labels import read_label_list
from hf_ast.training.averaging import average_state_dicts, check_compatible, ensemble_predictions, main
from hf_ast.training.synthetic import write_sound_events_audiofolder


def test_average_is_the_arithmetic_mean():
    models = [tiny_model(seed=seed) for seed in (0, 1, 2)]
    states = [model.state_dict() for model in models]
    averaged = average_state_dicts(iter(states))  # a generator is read one state dict at a time
    assert list(averaged) == list(states[0])
    for key, value in averaged.items():
        expected = (states[0][key].double() + states[1][key].double() + states[2][key].double()) / 3
        assert value.dtype == states[0][key].dtype
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    # The inputs are left untouched.
    torch.testing.assert_close(models[0].state_dict()["classifier.dense.weight"], states[0]["classifier.dense.weight"])


def test_average_keeps_equal_integer_buffers_and_refuses_different_ones():
    a = {"weight": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "steps": torch.tensor(7)}
    b = {"weight": torch.tensor([3.0, 6.0], dtype=torch.bfloat16), "steps": torch.tensor(7)}
    averaged = average_state_dicts([a, b])
    assert averaged["weight"].dtype == torch.bfloat16 and averaged["weight"].tolist() == [2.0, 4.0]
    assert averaged["steps"].item() == 7
    with pytest.raises(ValueError, match="non-floating tensor 'steps'.*state dict 1"):
        average_state_dicts([a, {**b, "steps": torch.tensor(8)}])
    with pytest.raises(ValueError, match=r"'weight' has shape \(3,\) in state dict 1 but \(2,\)"):
        average_state_dicts([a, {**b, "weight": torch.zeros(3)}])
    with pytest.raises(ValueError, match=r"missing \['steps'\]"):
        average_state_dicts([a, {"weight": b["weight"]}])


def test_check_compatible_names_the_first_difference():
    base = tiny_model(seed=0)
    check_compatible([base, tiny_model(seed=1), base.config])  # same architecture and labels

    longer = tiny_model(max_length=256)
    message = "model 1 is not compatible with model 0: max_length is 128 in model 0 but 256"
    with pytest.raises(ValueError, match=message):
        check_compatible([base, longer])
    # Same tensor shapes, different meaning: refused on the config.
    with pytest.raises(ValueError, match="num_attention_heads is 4 in a but 2 in b"):
        check_compatible([base.config, tiny_model(num_attention_heads=2).config], names=["a", "b"])
    # Labels in another order.
    id2label = {i: f"class{i}" for i in range(5)}
    swapped = {**id2label, 1: "class2", 2: "class1"}
    with pytest.raises(ValueError, match="class 1 is 'class1' in model 0 but 'class2' in model 1 \\(id2label order"):
        check_compatible([tiny_model(id2label=id2label), tiny_model(id2label=swapped)])
    with pytest.raises(ValueError, match="model 0 has 5 labels but model 1 has 3"):
        check_compatible([base, tiny_model(num_labels=3)])
    # State dicts alone: tensor shapes.
    message = r"tensor 'classifier.dense.weight' has shape \(5, 32\) in model 0 but \(3, 32\)"
    with pytest.raises(ValueError, match=message):
        check_compatible([base.state_dict(), tiny_model(num_labels=3).state_dict()])


def test_ensemble_is_the_mean_of_scores():
    a = np.array([[0.2, 0.9], [0.4, 0.1]])
    b = np.array([[0.6, 0.5], [0.0, 0.3]])
    np.testing.assert_allclose(ensemble_predictions([a, b]), [[0.4, 0.7], [0.2, 0.2]])
    out = ensemble_predictions([torch.tensor(a), torch.tensor(b), torch.tensor(b)])
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.tensor((a + 2 * b) / 3))
    with pytest.raises(ValueError, match="same \\(N, num_labels\\) shape"):
        ensemble_predictions([a, b[:, :1]])


def test_soup_cli_writes_the_average_and_compares_models(tmp_path, capsys):
    directories = []
    for seed in (0, 1):
        directory = tmp_path / f"model{seed}"
        tiny_model(seed=seed).save_pretrained(directory)
        HfAstFeatureExtractor(max_length=128).save_pretrained(directory)
        directories.append(str(directory))
    generator = torch.Generator().manual_seed(0)
    input_values = torch.randn(8, 128, 128, generator=generator)
    labels = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]] * 4, dtype=torch.float32)
    labels[0, 1] = 1.0
    torch.save({"input_values": input_values, "labels": labels}, tmp_path / "features.pt")
    output = tmp_path / "soup"

    results = main(["soup", *directories, "--output", str(output), "--eval-features", str(tmp_path / "features.pt"),
                    "--device", "cpu"])

    soup = HfAstForAudioClassification.from_pretrained(output)
    members = [HfAstForAudioClassification.from_pretrained(d) for d in directories]
    for key, value in soup.state_dict().items():
        torch.testing.assert_close(value, (members[0].state_dict()[key] + members[1].state_dict()[key]) / 2)
    assert (output / "preprocessor_config.json").exists()

    assert list(results) == [*directories, "ensemble", "soup"]
    with torch.no_grad():
        scores = [model(input_values).logits.sigmoid().numpy() for model in members]
    ensemble = (scores[0] + scores[1]) / 2
    expected_map = np.mean([average_precision_score(labels[:, c], ensemble[:, c]) for c in range(5)])
    assert results["ensemble"]["mAP"] == pytest.approx(expected_map, abs=1e-6)
    table = capsys.readouterr().out
    assert "mAP" in table and "ensemble" in table and "soup" in table and directories[1] in table


def test_soup_cli_refuses_incompatible_models(tmp_path):
    tiny_model(seed=0).save_pretrained(tmp_path / "a")
    tiny_model(seed=0, max_length=256).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="max_length is 128 in .*a but 256 in .*b"):
        main(["soup", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_soup_cli_evaluates_on_an_audio_dataset(tmp_path, capsys):
    """--eval-dataset: clips decoded and featurised by the first model's extractor; AudioSet-style ids
    mapped to display names through --label-list; a corrupt clip left out; numbers equal an independent run."""
    data = write_sound_events_audiofolder(tmp_path / "data", num_train=2, num_test=10, seed=3, duration_s=1.0)
    ids, names = read_label_list(data / "class_labels_indices.csv")
    label_list = tmp_path / "labels.csv"  # AudioSet-like: the data carries ids, the models show display names
    label_list.write_text("index,mid,display_name\n" + "".join(f"{i},{n},Display {n}\n" for i, n in enumerate(ids)))
    (data / "test" / "corrupt.wav").write_bytes(b"RIFF not a wave file at all")
    with open(data / "test" / "metadata.jsonl", "a") as metadata:
        metadata.write(json.dumps({"file_name": "corrupt.wav", "labels": ["tone"]}) + "\n")
    id2label = {i: f"Display {n}" for i, n in enumerate(ids)}
    directories = []
    for seed in (0, 1):
        directory = tmp_path / f"model{seed}"
        tiny_model(seed=seed, num_labels=8, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                   problem_type="multi_label_classification").save_pretrained(directory)
        HfAstFeatureExtractor(max_length=128).save_pretrained(directory)
        directories.append(str(directory))

    results = main(["soup", *directories, "--output", str(tmp_path / "soup"), "--eval-dataset", str(data),
                    "--label-list", str(label_list), "--batch-size", "4", "--device", "cpu"])

    rows = [json.loads(line) for line in (data / "test" / "metadata.jsonl").read_text().splitlines()][:-1]
    clips = [soundfile.read(data / "test" / row["file_name"], dtype="float32")[0] for row in rows]
    targets = np.zeros((len(rows), 8))
    for i, row in enumerate(rows):
        targets[i, [ids.index(label) for label in row["labels"]]] = 1
    extractor = HfAstFeatureExtractor(max_length=128)
    features = extractor(clips, sampling_rate=16000, return_tensors="pt")["input_values"]
    with torch.no_grad():
        scores = [HfAstForAudioClassification.from_pretrained(d)(features).logits.sigmoid().numpy()
                  for d in directories]
    for name, score in [(directories[0], scores[0]), ("ensemble", (scores[0] + scores[1]) / 2)]:
        classes = [c for c in range(8) if targets[:, c].any()]
        expected = np.mean([average_precision_score(targets[:, c], score[:, c]) for c in classes])
        assert results[name]["mAP"] == pytest.approx(expected, abs=1e-5), name
    assert f"evaluated on {len(rows)} clips" in capsys.readouterr().out


def save_members(tmp_path, seeds=(0, 1)):
    directories = []
    for seed in seeds:
        directory = tmp_path / f"model{seed}"
        tiny_model(seed=seed).save_pretrained(directory)
        HfAstFeatureExtractor(max_length=128).save_pretrained(directory)
        directories.append(directory)
    return directories


def files_in(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_soup_cli_refuses_an_input_as_output_even_with_overwrite(tmp_path, monkeypatch):
    a, b = save_members(tmp_path)
    before = files_in(a)
    for flags in ([], ["--overwrite"]):
        with pytest.raises(ValueError, match=r"model0 is the input .*choose another output folder"):
            main(["soup", str(a), str(b), "--output", str(a), *flags])
        monkeypatch.chdir(tmp_path)  # the same folder spelt another way
        with pytest.raises(ValueError, match=r"is the input"):
            main(["soup", "./model0/", str(b), "--output", "model0", *flags])
    assert files_in(a) == before


def test_soup_cli_refuses_a_non_empty_output_and_overwrite_keeps_other_files(tmp_path):
    a, b = save_members(tmp_path)
    out = tmp_path / "other-model"
    out.mkdir()
    other = {"model-00001-of-00002.safetensors": b"shard 1 of another model",
             "model-00002-of-00002.safetensors": b"shard 2 of another model",
             "config.json": b'{"model_type": "another"}', "notes.txt": b"keep me"}
    for name, content in other.items():
        (out / name).write_bytes(content)
    with pytest.raises(FileExistsError, match=r"other-model is not empty .*--overwrite"):
        main(["soup", str(a), str(b), "--output", str(out)])
    assert files_in(out) == other

    main(["soup", str(a), str(b), "--output", str(out), "--overwrite"])
    after = files_in(out)
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "notes.txt"):
        assert after[name] == other[name], name  # save_pretrained would have deleted the shards
    soup = HfAstForAudioClassification.from_pretrained(out)
    members = [HfAstForAudioClassification.from_pretrained(d) for d in (a, b)]
    for key, value in soup.state_dict().items():
        torch.testing.assert_close(value, (members[0].state_dict()[key] + members[1].state_dict()[key]) / 2)
    assert (out / "preprocessor_config.json").exists()


def test_soup_cli_names_a_missing_model_folder(tmp_path, monkeypatch):
    [a] = save_members(tmp_path, seeds=(0,))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: \./model1"):
        main(["soup", str(a), "./model1", "--output", "out"])
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: model1 .*Hub repository model1"):
        main(["soup", str(a), "model1", "--output", "out"])
    assert not (tmp_path / "out").exists()
