"""Label files, multi-hot targets, inferred label lists and checkpoint label-order checks."""

import datasets
import pytest
import torch

from hf_ast.labels import check_label_order, infer_label_list, label_maps, multi_hot, read_label_list

AUDIOSET_CSV = """index,mid,display_name
0,/m/09x0r,"Speech"
1,/m/05zppz,"Male speech, man speaking"
2,/m/02zsn,"Female speech, woman speaking"
3,/m/0ytgt,"Child speech, kid speaking"
"""


def test_read_audioset_class_labels_indices(tmp_path):
    path = tmp_path / "class_labels_indices.csv"
    path.write_text(AUDIOSET_CSV, encoding="utf-8")
    ids, names = read_label_list(path)
    assert ids == ["/m/09x0r", "/m/05zppz", "/m/02zsn", "/m/0ytgt"]
    assert names == [
        "Speech", "Male speech, man speaking", "Female speech, woman speaking", "Child speech, kid speaking"
    ]


def test_read_plain_text_labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("yes\nno\n\nup\n", encoding="utf-8")
    labels = read_label_list(path)
    assert labels.ids == labels.names == ["yes", "no", "up"]


def test_read_label_list_errors(tmp_path):
    out_of_order = tmp_path / "bad.csv"
    out_of_order.write_text("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 3 has index 2, expected 1"):
        read_label_list(out_of_order)
    duplicated = tmp_path / "dup.txt"
    duplicated.write_text("dog\ncat\ndog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'dog' appears twice \(entries 0 and 2\)"):
        read_label_list(duplicated)
    no_mid = tmp_path / "nomid.csv"
    no_mid.write_text("index,name\n0,A\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks \['mid', 'display_name'\]"):
        read_label_list(no_mid)


def test_multi_hot_targets():
    _, label2id = label_maps(["/m/a", "/m/b", "/m/c"])
    targets = multi_hot([["/m/a", "/m/c"], [], "/m/b", ["/m/b", "/m/b"]], label2id)
    expected = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=torch.float32)
    assert torch.equal(targets, expected)
    assert multi_hot([], label2id).shape == (0, 3)


def test_multi_hot_names_the_example_and_the_unknown_label():
    _, label2id = label_maps(["/m/a", "/m/b"])
    with pytest.raises(ValueError, match=r"example 1 has label '/m/zzz', which is not among the 2 known labels"):
        multi_hot([["/m/a"], ["/m/b", "/m/zzz"]], label2id)


def test_infer_label_list_from_columns():
    features = datasets.Features(
        {
            "category": datasets.ClassLabel(names=["dog", "rooster", "pig"]),
            "tags": datasets.List(datasets.ClassLabel(names=["z", "y", "x"])),
            "labels": datasets.List(datasets.Value("string")),
            "word": datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_dict(
        {"category": [2, 0], "tags": [[0], [1, 2]], "labels": [["/m/b", "/m/a"], ["/m/c"]], "word": ["up", "down"]},
        features=features,
    )
    # ClassLabel keeps its declared order (its integers index it); other columns are sorted.
    assert infer_label_list(dataset, "category") == ["dog", "rooster", "pig"]
    assert infer_label_list(dataset, "tags") == ["z", "y", "x"]
    assert infer_label_list(dataset, "labels") == ["/m/a", "/m/b", "/m/c"]
    assert infer_label_list(dataset, "word") == ["down", "up"]
    assert infer_label_list([3, 1, 3, 2]) == [1, 2, 3]
    with pytest.raises(ValueError, match="column 'missing' not found"):
        infer_label_list(dataset, "missing")
    with pytest.raises(ValueError, match="mix types"):
        infer_label_list(["a", 1])


def test_check_label_order():
    id2label = {"0": "Speech", "1": "Music", "2": "Dog"}  # string keys, as in a saved config.json
    check_label_order(id2label, ["Speech", "Music", "Dog"])  # same order: no error

    message = r"same 3 labels in a different order \(class 1 is 'Music'.*new classification head"
    with pytest.raises(ValueError, match=message):
        check_label_order(id2label, ["Speech", "Dog", "Music"])
    with pytest.raises(ValueError, match=r"checkpoint has 3 labels, the data 2\..*new-head option"):
        check_label_order(id2label, ["Speech", "Music"])
    with pytest.raises(ValueError, match=r"class 2 is 'Dog' in the checkpoint but 'Cat' in the data\. Use --new_head"):
        check_label_order(id2label, ["Speech", "Music", "Cat"], hint="Use --new_head.")
