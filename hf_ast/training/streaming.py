"""Training and evaluation from a streamed `datasets.IterableDataset` (sets that do not fit on
disk: the full AudioSet is about 2.4 TB).

`StreamShard` makes every process read the same stream in the same order (the same shuffle
seed and epoch) and keep its share of each *global* batch (`batch_size * num_processes`
examples, cut into contiguous slices). Every process therefore runs the same number of steps
and the stream's position after a global batch, the dataset's own `state_dict()`, is the same
on all of them: the training script stores it in its checkpoints and a resumed run continues
from there. Reading the whole stream on every process costs bandwidth, not correctness; what is
expensive (decoding, features, the model) only happens for the process's own share.

What a resume does not restore: `IterableDataset.shuffle` keeps a buffer of examples that its
`state_dict` does not hold, so a run resumed mid-epoch never sees the (at most
`buffer_size`) examples that were waiting in the buffer at the checkpoint, for the rest of that
epoch (datasets logs this). Without a shuffle buffer a resume continues exactly.
"""

from collections.abc import Callable, Iterator

import torch

PADDING_KEY = "_padding"
INDEX_KEY = "_index"


class StreamShard(torch.utils.data.IterableDataset):
    """Yields `(rows, state)`: this process's rows of each global batch and the stream position after it.

    `rows` always has `ceil(len(global batch) / num_processes)` entries, so tensors gathered
    across processes have equal sizes; when the last global batch of an epoch is short, the
    missing rows are copies of its first row marked `_padding=True` (the collator turns them into
    rows with `valid=False`, which training gives zero weight and evaluation drops). Each row gets
    `_index`, its position in the epoch, which keys the collator's augmentation randomness.

    `check_row(row, position)` runs on every row of the global batch on every process, so a bad
    label raises on all processes together instead of leaving the others waiting.

    Use with `DataLoader(shard, batch_size=None, num_workers=0 or 1, collate_fn=...)`: batching
    happens here. More than one worker would split the stream between workers and lose the single
    stream position, so the training script refuses it.
    """

    def __init__(
        self,
        stream,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        check_row: Callable[[dict, int], None] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} outside 0..{num_processes - 1}")
        self.stream = stream
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.check_row = check_row
        self.epoch = 0
        self._start = None  # (position, stream state) to resume from, for the next iteration only

    def set_epoch(self, epoch: int, resume: dict | None = None):
        """Call before each epoch's iteration; `resume` is a `state` yielded earlier in this epoch."""
        if resume is not None and resume["epoch"] != epoch:
            raise ValueError(f"resume state is from epoch {resume['epoch']}, not {epoch}")
        self.epoch = epoch
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)  # re-seeds the shuffle (shard order and buffer) per epoch
        self._start = resume

    def __iter__(self) -> Iterator[tuple[list[dict], dict]]:
        position = 0
        if self._start is not None:
            self.stream.load_state_dict(self._start["stream"])
            position = self._start["position"]
        group = self.batch_size * self.num_processes
        rows = []
        for row in self.stream:
            if self.check_row is not None:
                self.check_row(row, position + len(rows))
            rows.append({**row, INDEX_KEY: position + len(rows)})
            if len(rows) == group:
                position += group
                yield self._share(rows), self._state(position)
                rows = []
        if rows:
            position += len(rows)
            yield self._share(rows), self._state(position)

    def _state(self, position: int) -> dict:
        return {"epoch": self.epoch, "position": position, "stream": self.stream.state_dict()}

    def _share(self, rows: list[dict]) -> list[dict]:
        # Contiguous slices: gathering the processes' outputs in rank order restores the stream order.
        size = -(-len(rows) // self.num_processes)  # ceil
        mine = rows[self.process_index * size : (self.process_index + 1) * size]
        return mine + [{**rows[0], PADDING_KEY: True}] * (size - len(mine))


class ShardCollator:
    """`collate_fn` for a `StreamShard` loader: the rows through `collator`, plus `stream_state` (after this batch)."""

    def __init__(self, collator: Callable[[list[dict]], dict]):
        self.collator = collator

    def __call__(self, item: tuple[list[dict], dict]) -> dict:
        rows, state = item
        return {**self.collator(rows), "stream_state": state}


def stream_column_names(stream) -> list[str]:
    """Columns of a streamed split, reading one example when the features are not known up front."""
    if getattr(stream, "column_names", None):
        return list(stream.column_names)
    first = next(iter(stream.take(1)), None)
    if first is None:
        raise ValueError("the streamed split is empty")
    return list(first)
