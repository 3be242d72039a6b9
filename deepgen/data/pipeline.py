"""A deterministic, resumable, per-process batch iterator over an in-memory dataset.

Epoch e visits a permutation drawn from (seed, e); batch b of that epoch is built by a
user-supplied function from the global indices, this process's rows and a generator seeded by
(seed, e, b). The function loads only those rows but draws its randomness for the whole global
batch, so the global batch is the same for any number of processes or devices. The position
(epoch, batch) is the iterator's whole state.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

# (global indices of the batch, this process's rows of it, generator seeded per (seed, epoch,
# batch)) -> pytree of numpy arrays holding only this process's rows.
MakeBatch = Callable[[np.ndarray, slice, np.random.Generator], Any]


class EpochIterator:
    """Shuffled epochs without replacement; drops the last incomplete batch of each epoch."""

    def __init__(
        self,
        *,
        num_examples: int,
        global_batch_size: int,
        make_batch: MakeBatch,
        seed: int,
        process_rows: slice,
        shuffle: bool = True,
    ):
        if global_batch_size > num_examples:
            raise ValueError(
                f"batch size {global_batch_size} is larger than the dataset ({num_examples})"
            )
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.batches_per_epoch = num_examples // global_batch_size
        self._make_batch = make_batch
        self._seed = seed
        self._rows = process_rows
        self._shuffle = shuffle
        self._epoch, self._batch = 0, 0
        self._order_epoch, self._order = -1, np.arange(num_examples)

    def get_state(self) -> dict:
        """The position as a JSON-safe dict."""
        return {"epoch": self._epoch, "batch": self._batch, "seed": self._seed}

    def set_state(self, state: dict) -> None:
        """Jump to a saved position."""
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self._epoch:
            if self._shuffle:
                rng = np.random.default_rng([self._seed, self._epoch])
                self._order = rng.permutation(self.num_examples)
            self._order_epoch = self._epoch
        return self._order

    def __iter__(self) -> "EpochIterator":
        return self

    def __next__(self) -> Any:
        start = self._batch * self.global_batch_size
        indices = self._epoch_order()[start : start + self.global_batch_size]
        rng = np.random.default_rng([self._seed, self._epoch, self._batch])
        batch = self._make_batch(indices, self._rows, rng)
        self._batch += 1
        if self._batch == self.batches_per_epoch:
            self._epoch, self._batch = self._epoch + 1, 0
        return batch
