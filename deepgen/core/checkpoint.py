"""Orbax checkpoints of the train state plus the input pipeline's position.

Each step directory holds two items: `state` (the TrainState, restored with its shardings) and
`data` (a small JSON dict from the batch iterator), so a resumed run sees the same batches.

In a single process, replicated arrays are written whole from one device: orbax's default
replica-parallel saving slices each one across its replicas first, and on one host that only adds
a compiled slice per leaf and device (about 2 s on the first save of a 50-leaf state on 2 CPU
devices, against 0.07 s without).
"""

import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then arrive as they would have.

    A Ctrl-C that lands inside orbax's wait for pending saves makes it log a traceback ("Save
    Finalize thread failed") before the interrupt goes on; held, it reaches the caller's handler
    once the checkpoint is whole. Only the main thread can set handlers; elsewhere nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set outside Python, left alone
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


@functools.cache
def _save_replicated_arrays_whole() -> None:
    """On one host, orbax saves each replicated array from one device, unsliced (once a process)."""
    if jax.process_count() > 1:
        return
    handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
    absl_logger = logging.getLogger("absl")  # it warns that a handler is overridden
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)


class Checkpointer:
    """Save every N steps and on demand, keep the last K, restore against an abstract state."""

    def __init__(
        self, directory: str, *, max_to_keep: int, save_every: int, async_save: bool = True
    ):
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        _save_replicated_arrays_whole()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every saved step, oldest first."""
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """True on multiples of save_every."""
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Save (asynchronously) unless this step is already on disk."""
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=True,
        )

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restore (state, data_state); abstract_state leaves carry the target shardings."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["data"] or {})

    def wait(self) -> None:
        """Block until pending saves are on disk (a Ctrl-C meanwhile arrives after)."""
        with _interrupts_held():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release resources (a Ctrl-C meanwhile arrives after)."""
        with _interrupts_held():
            self._manager.wait_until_finished()
            self._manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that carry the shardings to restore onto."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_state,
        shardings,
    )
