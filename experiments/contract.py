"""What a method declares to the one runner (experiments/runner.py).

A method lives in `experiments/<name>/method.py` and defines `METHOD`, a subclass of `Method`;
`python -m experiments.main` finds it from `config.method`, so adding a method edits no list.
The runner owns everything else: the modes, parsing, config.json and its change log, restore
(latest or `--step`), the training loop (deepgen.core.train_loop), eval.json and the kept
per-split copies, progress lines, exit statuses and one-line errors.

Copy this skeleton for a new method:

    class MyMethod(Method):
        name = "mymethod"

        @classmethod
        def validate(cls, config): ...                 # ConfigError via deepgen.core.validate
        def __init__(self, config, *, mode): ...       # model, data of this mode, optimiser
        def unit(self): return Unit("steps", 1, config.train.batch_size)
        def init_state(self, rng): ...                 # a pytree (TrainState or the method's own)
        def train_step(self, state, batch, rng): ...   # pure: -> (state, scalar metrics)
        def batches(self): ...                         # a resumable iterator, or None
        def evaluate(self, state, *, step, quick, progress): ...  # -> the eval dict
        def sample(self, state, out_dir, *, step, progress): ...  # -> {what: path}

    METHOD = MyMethod
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
from ml_collections import ConfigDict

from deepgen.core import mesh as mesh_lib
from deepgen.core.train_loop import BatchIterator, HostHook, Unit, mean_over_window

# Keys every eval dict carries (the runner adds step, trained units, time and the tag).
EVAL_KEYS = ("split", "data_source", "num_examples", "unit", "baseline")


class Method(abc.ABC):
    """The pieces a method provides; defaults cover the common case of a batched, jitted step.

    validate, init_state, evaluate and sample are abstract: a subclass that lacks one cannot be
    instantiated. train_step is needed only by methods that train in the core loop (a method
    that overrides `train` with its own host loop does without it).
    """

    name: ClassVar[str] = ""
    # Metrics that must stay finite (NaN allowed where an `updates` metric is 0).
    check_finite: ClassVar[Sequence[str]] = ("loss", "grad_norm")
    # Array-valued metrics (vmapped seeds) also logged per seed.
    per_seed: ClassVar[Sequence[str]] = ()

    @classmethod
    def for_config(cls, config: ConfigDict) -> type[Method]:
        """The class that runs this config (a method with several loops picks one here)."""
        return cls

    @classmethod
    @abc.abstractmethod
    def validate(cls, config: ConfigDict) -> None:
        """Raise ConfigError naming the first field whose value is not allowed."""

    def __init__(self, config: ConfigDict, *, mode: str):
        self.config = config
        self.mode = mode

    # ---- training ----------------------------------------------------------------------------

    def unit(self) -> Unit:
        """What train.num_steps counts and how far one train_step call advances it."""
        return Unit("steps", 1, int(self.config.train.batch_size))

    @property
    def mesh(self) -> jax.sharding.Mesh:
        """The device mesh from config.mesh (built once)."""
        if not hasattr(self, "_mesh"):
            self._mesh = mesh_lib.make_mesh(self.config.mesh)
        return self._mesh

    def state_shardings(self) -> Any:
        """Shardings of the state; None means replicated (FSDP-split when mesh.fsdp > 1)."""
        return None

    @abc.abstractmethod
    def init_state(self, rng: jax.Array) -> Any:
        """A fresh train state (parameters, optimiser state, and any carry the step needs)."""

    def train_step(self, state: Any, batch: Any, rng: jax.Array) -> tuple[Any, Mapping]:
        """One pure step: (state, batch or None, rng) -> (state, metrics)."""
        raise TypeError(
            f"{type(self).__name__} trains in the core loop but defines no train_step; define "
            "it, or override train() with a host loop"
        )

    def batches(self) -> BatchIterator | None:
        """The resumable training batch iterator, or None when the step makes its own data."""
        return None

    def jitted(self, name: str, fn: Callable) -> Callable:
        """jax.jit(fn), built once per method and name, so eval and sample reuse compilations."""
        cache = self.__dict__.setdefault("_jitted_functions", {})
        if name not in cache:
            cache[name] = jax.jit(fn)
        return cache[name]

    def describe(self) -> list[str]:
        """Lines logged when training starts (data, model size, ...)."""
        return []

    def loop_options(self) -> dict[str, Any]:
        """Extra options of deepgen.core.train_loop.train: eval_fn, host_hooks, summarize."""
        return {}

    def summarize(self) -> Callable[[dict, dict, int], dict]:
        """How a window of summed metrics becomes the logged ones (default: the mean)."""
        return mean_over_window

    def host_hooks(self) -> Sequence[HostHook]:
        """Host functions run between steps: (step, state, metrics) -> state."""
        return ()

    def train(self, workdir: str, built: tuple) -> Any:
        """Run the core loop; only a method that steps external emulators overrides this."""
        from deepgen.core import train_loop

        return train_loop.train(
            self.config,
            workdir,
            init_state=self.init_state,
            train_step=self.train_step,
            batches=self.batches(),
            mesh=self.mesh,
            unit=self.unit(),
            summarize=self.summarize(),
            host_hooks=self.host_hooks(),
            per_seed=self.per_seed,
            check_finite=self.check_finite,
            built=built,
            **self.loop_options(),
        )

    def restore(self, workdir: str, step: int | None = None) -> Any:
        """The state of a checkpoint of workdir written by --mode=train (the latest by default)."""
        return self.restore_at(workdir, step)[0]

    def restore_at(self, workdir: str, step: int | None = None) -> tuple[Any, int]:
        """(state, its step) of a checkpoint of workdir (the latest by default)."""
        from deepgen.core import train_loop

        state, at, _, checkpointer, _ = train_loop.build_state(
            self.config,
            workdir,
            self.init_state,
            self.mesh,
            shardings=self.state_shardings(),
            step=step,
            must_exist=True,
        )
        checkpointer.close()
        return state, at

    def check_resume(self, workdir: str, built: tuple) -> None:
        """Raise UserError if state kept beside the checkpoint (host files) does not fit the config.

        The runner calls it after the checkpoint was restored and before it writes anything, so a
        rejected resume leaves the workdir as it was.
        """
        del workdir, built  # by default a method keeps nothing beside its checkpoints

    def after_train(self, workdir: str) -> dict[str, str]:
        """Files made from the finished run (curves); {what: path}."""
        return {}

    # ---- evaluation and samples --------------------------------------------------------------

    def eval_tag(self) -> str:
        """What distinguishes this eval's output from others of the same step (split, source)."""
        return str(self.config.get("eval", {}).get("split", "eval"))

    @abc.abstractmethod
    def evaluate(self, state: Any, *, step: int, quick: bool, progress: Any) -> dict:
        """The paper's metric in its unit, with split, data_source, num_examples and a baseline."""

    def format_eval(self, report: Mapping[str, Any]) -> str:
        """A human-readable summary of the eval dict (default: its top-level scalars)."""
        scalars = {k: v for k, v in report.items() if isinstance(v, int | float | str)}
        return ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()
        )

    @abc.abstractmethod
    def sample(self, state: Any, out_dir: str, *, step: int, progress: Any) -> dict[str, str]:
        """Write what the paper shows (grids, text, curves) under out_dir; {what: path}."""
