"""What the Atari tests share: whether ale-py can run a game, and steps that raise a signal.

Import it after `pytest.importorskip("ale_py")`: it loads the Pong ROM once.
"""

import signal
from collections.abc import Callable

import pytest

from deepgen.noisynet import atari

ALE_ERROR = ""
try:  # ROMs ship inside the wheel; a broken install should skip, not fail, these tests
    atari.AtariEnv("pong", seed=0)
except Exception as error:
    ALE_ERROR = f"ale-py cannot load the Pong ROM: {error}"
needs_ale = pytest.mark.skipif(bool(ALE_ERROR), reason=ALE_ERROR or "ale-py loads")


def signal_on_call(step_fn: Callable, call: int, signum: int) -> Callable:
    """A replacement for the step method step_fn that raises signum on its call-th call first."""
    calls = []

    def step(self, *args):
        calls.append(1)
        if len(calls) == call:
            signal.raise_signal(signum)
        return step_fn(self, *args)

    return step
