"""Label lists and targets for audio-classification datasets.

A model's classifier rows are its labels in `config.id2label` order; a dataset's labels must be
put in that same order before training or evaluation, or every score is credited to the wrong
class without any error. These helpers read AudioSet's label file, build multi-hot targets, infer
a label list from a dataset column, and refuse a checkpoint whose label order differs from the
data's.
"""

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

AUDIOSET_COLUMNS = ("index", "mid", "display_name")


class LabelList(NamedTuple):
    """Labels in class-id order: `ids` (AudioSet mids such as `/m/09x0r`) and their `names` (`Speech`)."""

    ids: list[str]
    names: list[str]


def read_label_list(path: str | Path) -> LabelList:
    """Read AudioSet's `class_labels_indices.csv` (`index,mid,display_name`) or a one-label-per-line text file.

    CSV: rows must have `index` 0, 1, 2, ... in order (that order is the class-id order of the
    released AudioSet models); display names may be quoted and contain commas. Text: one label
    per line, blank lines skipped; the label is both id and name. Duplicates are refused.
    """
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as file:
        first_line = file.readline()
        file.seek(0)
        header = [cell.strip() for cell in next(csv.reader([first_line]), [])]
        if path.suffix.lower() == ".csv" or header[:3] == list(AUDIOSET_COLUMNS):
            ids, names = _read_csv(file, path)
        else:
            ids = [line.strip() for line in file if line.strip()]
            names = list(ids)
    if not ids:
        raise ValueError(f"{path} holds no labels.")
    seen = {}
    for position, label in enumerate(ids):
        if label in seen:
            raise ValueError(f"{path}: label {label!r} appears twice (entries {seen[label]} and {position}).")
        seen[label] = position
    return LabelList(ids, names)


def _read_csv(file, path: Path) -> tuple[list[str], list[str]]:
    reader = csv.DictReader(file, skipinitialspace=True)
    missing = [column for column in ("mid", "display_name") if column not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(
            f"{path}: header {reader.fieldnames} lacks {missing}; expected AudioSet's "
            f"'{','.join(AUDIOSET_COLUMNS)}' columns."
        )
    ids, names = [], []
    for row_number, row in enumerate(reader):
        if "index" in row and row["index"] is not None and int(row["index"]) != row_number:
            raise ValueError(
                f"{path}: row {row_number + 2} has index {row['index']}, expected {row_number}; the rows must be in "
                "class-id order 0, 1, 2, ..."
            )
        ids.append(row["mid"].strip())
        names.append(row["display_name"].strip())
    return ids, names


def label_maps(labels: Sequence) -> tuple[dict[int, str], dict[str, int]]:
    """`(id2label, label2id)` for a config, from labels in class-id order."""
    id2label = {i: str(label) for i, label in enumerate(labels)}
    return id2label, {label: i for i, label in id2label.items()}


def multi_hot(label_lists: Iterable, label2id: Mapping) -> torch.Tensor:
    """Float32 targets `(N, C)` with `C = len(label2id)`: 1 where an example carries a label (a torch tensor).

    Each example is a list of labels (multi-label) or a single label (then the row is one-hot).
    Labels are looked up as given (strings such as `/m/09x0r`, or whatever keys `label2id` has).
    An unknown label raises an error naming the example and the label.
    """
    num_labels = len(label2id)
    if sorted(label2id.values()) != list(range(num_labels)):
        raise ValueError(f"label2id must map its {num_labels} labels to the ids 0..{num_labels - 1}.")
    rows, columns = [], []  # coordinates of the ones
    num_examples = 0
    for index, labels in enumerate(label_lists):
        num_examples += 1
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
            labels = [labels]
        for label in labels:
            if label not in label2id:
                examples = ", ".join(repr(known) for known in list(label2id)[:3])
                raise ValueError(
                    f"example {index} has label {label!r}, which is not among the {num_labels} known labels "
                    f"({examples}, ...); the dataset and the label list disagree (pass the label list the data uses)."
                )
            rows.append(index)
            columns.append(label2id[label])
    targets = torch.zeros(num_examples, num_labels, dtype=torch.float32)
    targets[torch.tensor(rows, dtype=torch.long), torch.tensor(columns, dtype=torch.long)] = 1.0
    return targets


class RowTargets:
    """Targets of dataset rows computed from their label column (streamed data), for `AudioCollator`.

    `to_names` turns a row's label value (a ClassLabel int, a string or a list of them) into the
    label names of `label2id`; `check(row, position)` raises, naming the example, when a row holds
    a label the model does not know.
    """

    def __init__(self, label_column: str, label2id: Mapping, to_names: Callable | None = None):
        self.label_column = label_column
        self.label2id = dict(label2id)
        self.num_labels = len(self.label2id)
        self.to_names = to_names or (lambda value: value)

    def __call__(self, rows: list[dict]) -> torch.Tensor:
        return multi_hot([self.to_names(row[self.label_column]) for row in rows], self.label2id)

    def check(self, row: dict, position: int) -> None:
        if self.label_column not in row:
            raise ValueError(f"example {position} has no {self.label_column!r} column; its columns: {sorted(row)}")
        try:
            multi_hot([self.to_names(row[self.label_column])], self.label2id)
        except ValueError as error:
            raise ValueError(f"streamed example {position}: {error}") from None


def class_label_names(feature) -> list[str] | None:
    """Names of a datasets `ClassLabel`, or of the `ClassLabel` inside a `Sequence`/`List` feature."""
    for candidate in (feature, getattr(feature, "feature", None)):
        names = getattr(candidate, "names", None)
        if names is not None and hasattr(candidate, "str2int"):
            return list(names)
    return None


def infer_label_list(examples, column: str | None = None) -> list:
    """The label list of a dataset column, in class-id order.

    `examples` is either a `datasets.Dataset` with `column`, or the column's values: single labels
    (str or int) or lists of labels. A `ClassLabel` column (or list of `ClassLabel`) keeps its
    names in their declared order, since its integer values already index them; otherwise the
    sorted unique values. Note that the sorted order need not be a checkpoint's order: check
    with `check_label_order`.
    """
    if column is not None:
        features = getattr(examples, "features", None)
        if features is None or column not in features:
            raise ValueError(f"column {column!r} not found; available: {list(features or [])}.")
        names = class_label_names(features[column])
        if names is not None:
            return names
        examples = examples[column]
    unique = set()
    for value in examples:
        if isinstance(value, (str, bytes, int, np.integer)) or value is None:
            values = [value]
        else:
            values = list(value)
        for label in values:
            if label is None:
                raise ValueError("a label is None (missing); drop or fill unlabelled examples first.")
            unique.add(label.item() if isinstance(label, np.integer) else label)
    kinds = {type(label) for label in unique}
    if len(kinds) > 1:
        raise ValueError(f"labels mix types {sorted(k.__name__ for k in kinds)}; use one type (e.g. all str).")
    return sorted(unique)


def check_label_order(checkpoint_id2label: Mapping, data_labels: Sequence, hint: str | None = None) -> None:
    """Refuse a checkpoint whose labels are not the data's labels in the same order.

    `checkpoint_id2label` is a config's `id2label` (int or str keys, as in saved configs);
    `data_labels` the data's labels in class-id order (e.g. from `read_label_list` or
    `infer_label_list`). `hint` replaces the suggested fix (the training script's flag for a new
    classification head).
    """
    checkpoint = [str(checkpoint_id2label[key]) for key in sorted(checkpoint_id2label, key=int)]
    data = [str(label) for label in data_labels]
    if checkpoint == data:
        return
    fix = hint or (
        "To train on these labels, start from the checkpoint with a new classification head "
        "(HfAstForAudioClassification.from_pretrained_with_geometry(..., id2label=...) or the training "
        "script's new-head option)."
    )
    if sorted(checkpoint) == sorted(data):
        first = next(i for i, (a, b) in enumerate(zip(checkpoint, data)) if a != b)
        problem = (
            f"the checkpoint and the data have the same {len(data)} labels in a different order (class {first} is "
            f"{checkpoint[first]!r} in the checkpoint, {data[first]!r} in the data). To keep the trained head, "
            "re-number the data with the checkpoint's label2id"
        )
        raise ValueError(f"label order mismatch: {problem}. {fix}")
    if len(checkpoint) != len(data):
        missing = [label for label in data if label not in set(checkpoint)][:3]
        problem = f"the checkpoint has {len(checkpoint)} labels, the data {len(data)}"
        if missing:
            problem += f" (data labels unknown to the checkpoint: {missing}{', ...' if len(missing) == 3 else ''})"
    else:
        first = next(i for i, (a, b) in enumerate(zip(checkpoint, data)) if a != b)
        problem = f"class {first} is {checkpoint[first]!r} in the checkpoint but {data[first]!r} in the data"
    raise ValueError(f"label mismatch: {problem}. {fix}")


__all__ = [
    "LabelList",
    "check_label_order",
    "class_label_names",
    "infer_label_list",
    "label_maps",
    "multi_hot",
    "read_label_list",
]
