"""The cost of each curriculum signal: the fused step's time over a uniform-sampling step.

Full run (CPU, minutes on a free 2-core machine; writes benchmarks/results/curriculum/cost.json):

    python benchmarks/curriculum_cost.py                       # repeat_copy_cpu
    python benchmarks/curriculum_cost.py --config ngram_cpu    # about 6x longer steps

Seconds, the smoke config, 2 repeats of a few steps, for a check of the script (writes its JSON
under the temp folder unless --out; compiles at XLA backend optimisation level 0, which compiles
the 16 programs about a third faster than the tests' level 1, so its timings are not ones to
report):

    python benchmarks/curriculum_cost.py --quick

The issue's performance item (Graves et al. 2017, arXiv 1704.03003; deepgen/curriculum): "the
cost of each signal as the step time over a uniform-sampling step, measured in one run on the
CPU: at most 1.3x for the prediction-gain family that needs one extra forward pass, at most 2.2x
for the gradient family; the bandit's host work under 1% of a step."

What is timed, all in one process and interleaved:

1. Train steps. For every name in deepgen.curriculum.signals.POLICIES, the jitted, state-donating
   `deepgen.curriculum.learner.train_step` (one step of Algorithm 1: draw a task from Exp3.S,
   sample a batch, train, compute the signal, update the bandit), closed over the family that
   reads the method's device-resident data. Each signal runs under the training regime it needs,
   and its ratio is taken to a uniform-sampling step of the same regime:
     ml           maximum likelihood: the five loss signals and uniform
     variational  model.variational=True (the MDL loss): the two variational signals and uniform
     l2           model.l2_weight=1e-4 (--l2_weight): the two L2 signals and uniform
   Every regime is its own `Curriculum` (experiments/curriculum/method.py) built from the config
   with those fields set. curriculum.eval_every is set above the number of steps a runner takes,
   so the held-out scoring inside the step (a lax.cond) never fires while timing; it is timed
   apart (3). The uniform step draws its task from a constant policy and skips the bandit, so
   every signal's ratio includes the bandit's cost (2).
2. The bandit alone: `exp3s.policy` + `jax.random.categorical` + `exp3s.update`, jitted, for the
   config's number of tasks and reservoir sizes 1000 and 10000 (--bandit_sizes) plus the
   config's own; the reservoir's O(R) insert into its sorted order (the 20th/80th percentiles are
   then read by index) dominates it. Reported as a fraction of the uniform ML step. The bandit runs inside the jitted
   step: the loop makes no host call for it, so its host work per step is zero.
3. Held-out scoring: the jitted `learner.heldout_losses` call that the step makes every
   eval_every steps (every task, curriculum.eval_batch_size sequences each), per call and
   amortised over the config's own eval_every.
4. A jitted, donated scalar add, timed alike: the floor of one call's dispatch (the bandit timed
   alone in 2 pays one; inside the step it pays none). The bandit's cost inside the fused step is
   bounded from above by the gradient_prediction_gain step's excess over the uniform step (the
   bandit plus one squared norm of the gradient).

Protocol: every program is traced, compiled ahead of time (--compile_workers threads at once, by
default one per CPU) and called once (block_until_ready); then for each of --repeats rounds every
runner in turn makes --steps consecutive calls (--eval_calls for the held-out scoring) ending
in block_until_ready on its final state. Reported: the median per-call time over the rounds, and
each signal's ratio to its regime's uniform step computed within each round, then the median
over rounds (so load from other processes falls on both sides of a ratio alike).

Prints a markdown block ready for benchmarks/RESULTS.md (date, host, machine, jax version, load
average, command line) and writes everything, every raw timing included, to --out as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from benchmarks._common import (  # noqa: E402
    apply_overrides,
    load_average,
    parse_sizes,
    peak_memory,
)
from configs import curriculum as curriculum_configs  # noqa: E402
from deepgen.curriculum import exp3s, signals  # noqa: E402
from deepgen.curriculum import learner as learner_lib  # noqa: E402
from experiments.curriculum.method import Curriculum  # noqa: E402

DEFAULT_CONFIG, QUICK_CONFIG = "repeat_copy_cpu", "smoke"
CONFIGS = ("repeat_copy_cpu", "ngram_cpu", "repeat_copy", "ngram", "smoke", "repeat_copy_smoke")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "curriculum" / "cost.json"
STEPS, REPEATS, QUICK_STEPS, QUICK_REPEATS = 200, 5, 10, 2
BANDIT_SIZES = (1000, 10_000)
L2_WEIGHT = 1e-4
SEED = 0
BANDIT_HOST_BOUND = 0.01

# The signals of each training regime; uniform is every regime's baseline.
REGIMES: dict[str, tuple[str, ...]] = {
    "ml": (*signals.LOSS_SIGNALS, "uniform"),
    "variational": (*signals.VARIATIONAL_SIGNALS, "uniform"),
    "l2": (*signals.L2_SIGNALS, "uniform"),
}
PG_FAMILY, GRADIENT_FAMILY = "prediction gain", "gradient"
# signal -> (the family, its bound on the ratio to uniform, the work it adds to a step).
# VCG and L2G belong to neither family the issue bounds (they make no pass over data).
SIGNAL_INFO: dict[str, tuple[str | None, float | None, str]] = {
    "prediction_gain": (PG_FAMILY, 1.3, "1 forward: L(x, theta')"),
    "self_prediction_gain": (
        PG_FAMILY,
        1.3,
        "sample x' ~ D_k, 2 forwards: L(x', theta), L(x', theta')",
    ),
    "target_prediction_gain": (
        PG_FAMILY,
        1.3,
        "sample x' ~ D_N, 2 forwards: L(x', theta), L(x', theta')",
    ),
    "mean_prediction_gain": (
        PG_FAMILY,
        1.3,
        "sample x' ~ D_U(N), 2 forwards: L(x', theta), L(x', theta')",
    ),
    "gradient_prediction_gain": (GRADIENT_FAMILY, 2.2, "||grad L||^2 of the step's gradient"),
    "variational_complexity_gain": (None, None, "KL(phi') - KL(phi), no pass over data"),
    "gradient_variational_complexity_gain": (
        GRADIENT_FAMILY,
        2.2,
        "grad KL(phi) (the regulariser's gradient / kl_scale) . grad L",
    ),
    "l2_gain": (None, None, "||theta'||^2 - ||theta||^2, no pass over data"),
    "gradient_l2_gain": (GRADIENT_FAMILY, 2.2, "theta . grad L"),
    "uniform": (None, None, "baseline: constant policy, no signal, no bandit"),
}


# ---- runners: a program and its carried state, timed a block of calls at a time ---------------


@dataclasses.dataclass
class Runner:
    """One compiled program and its state; `block(n)` makes n calls and waits for the last."""

    label: str
    kind: str  # "step", "eval", "bandit" or "dispatch"
    calls: int
    block: Callable[[int], None]
    compile_s: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds_per_call: list[float] = dataclasses.field(default_factory=list)

    def time_block(self) -> float:
        """Seconds per call of one block of `calls` calls (appended to seconds_per_call)."""
        started = time.perf_counter()
        self.block(self.calls)
        per_call = (time.perf_counter() - started) / self.calls
        self.seconds_per_call.append(per_call)
        return per_call

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.seconds_per_call)


@dataclasses.dataclass
class Pending:
    """A traced program waiting for its compile; `finish(compiled, compile_s)` makes its Runner."""

    label: str
    lowered: Any
    finish: Callable[[Any, float], Runner]


def compile_all(pending: Sequence[Pending], workers: int) -> list[Runner]:
    """Compile every program, `workers` at a time (XLA releases the GIL), then warm each up."""

    def compile_one(p: Pending) -> tuple[Any, float]:
        started = time.perf_counter()
        compiled = p.lowered.compile()
        return compiled, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=workers) as pool:
        compiled = list(pool.map(compile_one, pending))
    return [p.finish(c, seconds) for p, (c, seconds) in zip(pending, compiled, strict=True)]


def step_program(method: Curriculum, regime: str, signal: str, calls: int) -> Pending:
    """The jitted, donating train step of one signal, over the method's device-resident data."""
    settings = dataclasses.replace(method.settings, signal=signal)
    family = method.with_data(method._data)
    step = jax.jit(
        functools.partial(
            learner_lib.train_step, method.learner, method.optimizer, family, settings
        ),
        donate_argnums=(0,),
    )
    rng = jax.random.key(SEED + 1)
    holder: dict[str, Any] = {"state": method.init_state(jax.random.key(SEED))}
    label = f"{regime}/{signal}"

    def finish(compiled: Any, compile_s: float) -> Runner:
        def block(n: int) -> None:
            state = holder["state"]
            metrics = None
            for _ in range(n):
                state, metrics = compiled(state, rng)
            jax.block_until_ready(state)
            holder["state"], holder["metrics"] = state, metrics

        block(1)  # the warm-up call
        info = {"regime": regime, "signal": signal, "holder": holder}
        return Runner(label, "step", calls, block, compile_s, info)

    return Pending(label, step.lower(holder["state"], rng), finish)


def bandit_program(num_tasks: int, reservoir_size: int, settings: Any, calls: int) -> Pending:
    """Exp3.S alone: policy, the task draw and the update with a random raw reward."""

    def one(state: exp3s.Exp3SState, rng: jax.Array) -> exp3s.Exp3SState:
        rng = jax.random.fold_in(rng, state.t)
        task_rng, reward_rng, reservoir_rng = jax.random.split(rng, 3)
        probs_N = exp3s.policy(state, epsilon=settings.epsilon)
        task = jax.random.categorical(task_rng, jnp.log(probs_N)).astype(jnp.int32)
        new_state, _ = exp3s.update(
            state,
            task=task,
            raw_reward=jax.random.normal(reward_rng),
            probs_N=probs_N,
            rng=reservoir_rng,
            eta=settings.eta,
            beta=settings.beta,
        )
        return new_state

    rng = jax.random.key(SEED + 2)
    holder = {"state": exp3s.init(num_tasks, reservoir_size)}
    label = f"bandit/R={reservoir_size}"

    def finish(compiled: Any, compile_s: float) -> Runner:
        def block(n: int) -> None:
            state = holder["state"]
            for _ in range(n):
                state = compiled(state, rng)
            jax.block_until_ready(state)
            holder["state"] = state

        block(1)
        info = {"reservoir_size": reservoir_size, "num_tasks": num_tasks}
        return Runner(label, "bandit", calls, block, compile_s, info)

    lowered = jax.jit(one, donate_argnums=(0,)).lower(holder["state"], rng)
    return Pending(label, lowered, finish)


def dispatch_program(calls: int) -> Pending:
    """The floor of any jitted call timed this way: a donated scalar plus one."""
    holder = {"x": jnp.zeros((), jnp.float32)}
    label = "dispatch/scalar_add"

    def finish(compiled: Any, compile_s: float) -> Runner:
        def block(n: int) -> None:
            x = holder["x"]
            for _ in range(n):
                x = compiled(x)
            jax.block_until_ready(x)
            holder["x"] = x

        block(1)
        return Runner(label, "dispatch", calls, block, compile_s)

    lowered = jax.jit(lambda x: x + 1.0, donate_argnums=(0,)).lower(holder["x"])
    return Pending(label, lowered, finish)


def eval_program(method: Curriculum, calls: int, batch_size: int) -> Pending:
    """The held-out scoring the step runs every eval_every steps (every task, one batch each)."""
    learner, family = method.learner, method.with_data(method._data)
    seed = method.settings.eval_seed

    def run(params: Any) -> jax.Array:
        return learner_lib.heldout_losses(
            learner, family, params, batch_size=batch_size, key=jax.random.key(seed)
        )[0]

    params = method.init_params(jax.random.key(SEED))
    label = "eval/heldout_losses"

    def finish(compiled: Any, compile_s: float) -> Runner:
        def block(n: int) -> None:
            out = None
            for _ in range(n):
                out = compiled(params)
            jax.block_until_ready(out)

        block(1)
        return Runner(label, "eval", calls, block, compile_s)

    return Pending(label, jax.jit(run).lower(params), finish)


# ---- the benchmark ------------------------------------------------------------------------------


def regime_config(args: argparse.Namespace, regime: str, eval_every: int) -> Any:
    """The config of one training regime, with the command line's overrides."""
    config = curriculum_configs.get_config(args.config)
    apply_overrides(config, args.set)
    if args.hidden:
        config.model.hidden_size = args.hidden
    if args.batch:
        config.train.batch_size = args.batch
        config.curriculum.fresh_batch_size = args.batch
    config.curriculum.signal = "uniform"
    config.curriculum.eval_every = eval_every
    config.model.variational = regime == "variational"
    config.model.l2_weight = args.l2_weight if regime == "l2" else 0.0
    Curriculum.validate(config)
    return config


def build_runners(args: argparse.Namespace) -> tuple[list[Runner], dict[str, Any]]:
    """Every runner, compiled and warmed up, and the settings they share."""
    # Above the steps a step runner takes (one warm-up call, then repeats x steps): the held-out
    # scoring inside the step never fires while it is timed.
    eval_every = 1 + args.repeats * args.steps + 1
    base = curriculum_configs.get_config(args.config)
    apply_overrides(base, args.set)
    pending: list[Pending] = []
    methods: dict[str, Curriculum] = {}
    for regime, names in REGIMES.items():
        started = time.perf_counter()
        method = Curriculum(regime_config(args, regime, eval_every), mode="train")
        methods[regime] = method
        pending += [step_program(method, regime, name, args.steps) for name in names]
        print(
            f"{regime}: built {args.config} and traced {len(names)} steps in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
    ml = methods["ml"]
    eval_batch = int(ml.settings.eval_batch_size)
    pending.append(eval_program(ml, args.eval_calls, eval_batch))
    num_tasks = ml.family.num_tasks
    sizes = sorted({*args.bandit_sizes, int(ml.settings.reservoir_size)})
    pending += [bandit_program(num_tasks, size, ml.settings, args.steps) for size in sizes]
    pending.append(dispatch_program(args.steps))
    workers = args.compile_workers
    print(
        f"compiling {len(pending)} programs ({len(pending) - 2 - len(sizes)} steps, the held-out "
        f"scoring, the bandit at R = {sizes}, a scalar add), {workers} at a time",
        flush=True,
    )
    started = time.perf_counter()
    runners = compile_all(pending, workers)
    compile_wall_s = time.perf_counter() - started
    print(f"compiled and warmed up in {compile_wall_s:.1f} s", flush=True)
    config = ml.config
    family = ml.family
    settings = {
        "config": args.config,
        "overrides": list(args.set),
        "task_family": family.kind,
        "model_kind": str(config.model.get("kind", "lstm")),
        "num_tasks": num_tasks,
        "hidden_size": int(config.model.hidden_size),
        "batch_size": int(config.train.batch_size),
        "fresh_batch_size": int(config.curriculum.fresh_batch_size),
        "sequence_length": int(family.seq_len),
        "input_size": int(family.input_size),
        "output_size": int(family.output_size),
        "likelihood": family.likelihood,
        "optimizer": str(config.opt.name),
        "reservoir_size": int(ml.settings.reservoir_size),
        "bandit_sizes": sizes,
        "l2_weight": args.l2_weight,
        "kl_examples": int(config.model.kl_examples),
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "eval_calls_per_block": args.eval_calls,
        "eval_every_while_timing": eval_every,
        "eval_every_config": int(base.curriculum.eval_every),
        "eval_batch_size": eval_batch,
        "data_source": family.data_source,
        "compile_workers": workers,
        "compile_and_warmup_wall_s": compile_wall_s,
    }
    return runners, settings


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(runners: Sequence[Runner], settings: dict[str, Any]) -> dict[str, Any]:
    """Medians, per-round ratios to each regime's uniform step, the bandit and eval fractions."""
    steps = [r for r in runners if r.kind == "step"]
    uniform = {r.info["regime"]: r for r in steps if r.info["signal"] == "uniform"}
    ml_uniform = uniform["ml"].seconds_per_call
    rows = []
    for r in steps:
        regime, signal = r.info["regime"], r.info["signal"]
        family, bound, work = SIGNAL_INFO[signal]
        base = uniform[regime].seconds_per_call
        ratios = [t / u for t, u in zip(r.seconds_per_call, base, strict=True)]
        ratio = _median(ratios)
        metrics = r.info["holder"].get("metrics") or {}
        loss = float(metrics["loss"]) if "loss" in metrics else math.nan
        rows.append(
            {
                "signal": signal,
                "regime": regime,
                "family": family,
                "extra_work": work,
                "bound": bound,
                "holds": None if bound is None else bool(ratio <= bound),
                "ms_per_step_median": r.median_ms,
                "ms_per_step_min": 1e3 * min(r.seconds_per_call),
                "ratio_to_uniform_median": ratio,
                "ratios_per_round": ratios,
                "ms_per_step_per_round": [1e3 * t for t in r.seconds_per_call],
                "compile_s": r.compile_s,
                "last_loss_per_scored_step": loss,
                "loss_finite": math.isfinite(loss),
            }
        )
    bandit = []
    for r in (r for r in runners if r.kind == "bandit"):
        fractions = [t / u for t, u in zip(r.seconds_per_call, ml_uniform, strict=True)]
        bandit.append(
            {
                "reservoir_size": r.info["reservoir_size"],
                "num_tasks": r.info["num_tasks"],
                "ms_per_call_median": r.median_ms,
                "fraction_of_uniform_ml_step_median": _median(fractions),
                "ms_per_call_per_round": [1e3 * t for t in r.seconds_per_call],
                "compile_s": r.compile_s,
            }
        )
    (floor,) = (r for r in runners if r.kind == "dispatch")
    # GPG adds only ||grad L||^2 (one pass over the gradient) to the bandit: its excess over the
    # uniform step bounds the bandit's cost inside the fused step from above.
    gpg = next(r for r in steps if r.info["signal"] == "gradient_prediction_gain")
    in_step = [g - u for g, u in zip(gpg.seconds_per_call, ml_uniform, strict=True)]
    bandit_in_step = {
        "estimate": "gradient_prediction_gain step - uniform step (ml), per round",
        "ms_median": 1e3 * _median(in_step),
        "fraction_of_uniform_ml_step_median": _median(
            [d / u for d, u in zip(in_step, ml_uniform, strict=True)]
        ),
        "ms_per_round": [1e3 * d for d in in_step],
    }
    dispatch = {
        "what": "a jitted, donated scalar + 1, timed as the steps are",
        "ms_per_call_median": floor.median_ms,
        "ms_per_call_per_round": [1e3 * t for t in floor.seconds_per_call],
    }
    (ev,) = (r for r in runners if r.kind == "eval")
    eval_ratios = [t / u for t, u in zip(ev.seconds_per_call, ml_uniform, strict=True)]
    eval_every = settings["eval_every_config"]
    evaluation = {
        "ms_per_call_median": ev.median_ms,
        "ms_per_call_per_round": [1e3 * t for t in ev.seconds_per_call],
        "ratio_to_uniform_ml_step_median": _median(eval_ratios),
        "eval_every_config": eval_every,
        "amortised_fraction_of_uniform_ml_step": _median(eval_ratios) / eval_every,
        "compile_s": ev.compile_s,
    }
    return {
        "steps": rows,
        "bandit": bandit,
        "bandit_in_step": bandit_in_step,
        "dispatch": dispatch,
        "eval": evaluation,
    }


# ---- the report ---------------------------------------------------------------------------------


def _holds(row: dict[str, Any]) -> str:
    if row["bound"] is None:
        return "n/a"
    return "yes" if row["holds"] else "**no**"


def markdown(report: dict[str, Any]) -> str:
    """The block for benchmarks/RESULTS.md."""
    s, r = report["settings"], report["results"]
    lines = [
        "## Curriculum signal cost (`benchmarks/curriculum_cost.py`)",
        "",
        f"{report['date']}, host {report['host']}, {report['machine']}, jax {report['jax']}, "
        f"load average {report['load_average_start']} at start and "
        f"{report['load_average_end']} at the end; peak memory {report['peak_memory']}; wall "
        f"time {report['wall_s']:.0f} s. Command: `{report['command']}`",
        "",
        f"Config {s['config']}: {s['task_family']}, {s['num_tasks']} tasks, LSTM of "
        f"{s['hidden_size']} cells, batch {s['batch_size']} (x' batch {s['fresh_batch_size']}), "
        f"sequence length {s['sequence_length']}, {s['likelihood']} outputs, {s['optimizer']}, "
        f"reservoir {s['reservoir_size']}. Regimes: ml (maximum likelihood), variational "
        f"(model.variational=True, kl_examples {s['kl_examples']}), l2 (model.l2_weight="
        f"{s['l2_weight']:g}); each signal's ratio is to the uniform step of its regime, taken "
        f"within each of {s['repeats']} interleaved rounds of {s['steps_per_block']} consecutive "
        "steps, then the median over rounds. curriculum.eval_every was set to "
        f"{s['eval_every_while_timing']} (above every runner's step count), so the held-out "
        "scoring never fired while timing; it is timed apart below. The uniform step skips the "
        "bandit, so every ratio includes the bandit's cost.",
        "",
        "| signal | regime | extra work over a uniform step | ms/step (median) | ratio to "
        "uniform | issue bound | holds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["steps"]:
        bound = "—" if row["bound"] is None else f"<= {row['bound']:g}x ({row['family']})"
        lines.append(
            f"| {row['signal']} | {row['regime']} | {row['extra_work']} | "
            f"{row['ms_per_step_median']:.3f} | {row['ratio_to_uniform_median']:.3f}x | {bound} "
            f"| {_holds(row)} |"
        )
    ev = r["eval"]
    lines += [
        "",
        f"Held-out scoring (eval cost per call: every task, {s['eval_batch_size']} sequences "
        f"each, what the step runs every eval_every steps): {ev['ms_per_call_median']:.3f} ms, "
        f"{ev['ratio_to_uniform_ml_step_median']:.2f}x a uniform ml step; amortised over the "
        f"config's eval_every = {ev['eval_every_config']}: "
        f"{100 * ev['amortised_fraction_of_uniform_ml_step']:.1f}% of a step.",
        "",
        "| bandit alone (policy + draw + update) | ms/call (median) | fraction of a uniform ml "
        "step |",
        "|---|---|---|",
    ]
    for b in r["bandit"]:
        lines.append(
            f"| N = {b['num_tasks']} tasks, reservoir R = {b['reservoir_size']:,} | "
            f"{b['ms_per_call_median']:.4f} | "
            f"{100 * b['fraction_of_uniform_ml_step_median']:.2f}% |"
        )
    b_in, floor = r["bandit_in_step"], r["dispatch"]
    lines += [
        "",
        "The bandit's host work: 0 per step (bound < 1% of a step: holds). It runs inside the "
        "jitted step (its state is part of the donated train state), so the loop makes no host "
        "call for it; its cost is device time only, and the reservoir's O(R) sorted insert "
        "dominates it. The times above are of the bandit as its own jitted call, so they "
        f"include one call's dispatch (a jitted scalar add, timed alike: "
        f"{floor['ms_per_call_median']:.4f} ms). Inside the fused step, at the config's R = "
        f"{s['reservoir_size']:,}, the bandit costs at most {b_in['ms_median']:.3f} ms "
        f"({100 * b_in['fraction_of_uniform_ml_step_median']:.1f}% of a uniform ml step): the "
        "gradient_prediction_gain step's excess over the uniform step, which is the bandit plus "
        "one squared norm of the gradient.",
    ]
    bad = [row for row in r["steps"] if not row["loss_finite"]]
    if bad:
        lines.append(
            "Non-finite last loss: " + ", ".join(f"{x['regime']}/{x['signal']}" for x in bad)
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; --quick uses the smoke config, a few steps and 2 rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke config, a few steps")
    parser.add_argument(
        "--config",
        default=None,
        choices=CONFIGS,
        help=f"configs/curriculum.py variant (default {DEFAULT_CONFIG}; --quick: {QUICK_CONFIG})",
    )
    parser.add_argument("--out", default=None, help=f"JSON path (default {DEFAULT_OUT})")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"consecutive steps per block ({STEPS})"
    )
    parser.add_argument("--repeats", type=int, default=None, help=f"rounds ({REPEATS})")
    parser.add_argument(
        "--eval_calls", type=int, default=None, help="held-out scoring calls per block"
    )
    parser.add_argument("--hidden", type=int, default=None, help="model.hidden_size override")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="train.batch_size override (curriculum.fresh_batch_size follows)",
    )
    parser.add_argument("--l2_weight", type=float, default=L2_WEIGHT, help="alpha of the l2 regime")
    parser.add_argument(
        "--bandit_sizes",
        default=None,
        help=f"comma list of reservoir sizes of the bandit alone (default {BANDIT_SIZES})",
    )
    parser.add_argument(
        "--compile_workers",
        type=int,
        default=os.cpu_count() or 1,
        help="programs compiled at once (default: the CPU count)",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="a.b=value override of the config"
    )
    args = parser.parse_args(argv)
    args.config = args.config or (QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
    args.steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    args.repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    args.eval_calls = args.eval_calls or max(2, args.steps // 10)
    args.bandit_sizes = parse_sizes(args.bandit_sizes) or list(BANDIT_SIZES)
    if min(args.steps, args.repeats, args.eval_calls, args.compile_workers, *args.bandit_sizes) < 1:
        parser.error(
            "--steps, --repeats, --eval_calls, --compile_workers and --bandit_sizes must be positive"
        )
    if (args.hidden is not None and args.hidden < 1) or (args.batch is not None and args.batch < 1):
        parser.error("--hidden and --batch must be positive")
    if args.l2_weight <= 0:
        parser.error("--l2_weight must be > 0 (the L2 signals need it)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Compile, time in interleaved rounds, print the markdown block, write the JSON."""
    started = time.perf_counter()
    args = parse_args(argv)
    _common.compile_quickly(args.quick, level=0)
    out = _common.output_path(
        args.out, quick=args.quick, default=DEFAULT_OUT, quick_name="curriculum_cost_quick.json"
    )
    report: dict[str, Any] = _common.report_header(
        "benchmarks/curriculum_cost.py", argv, quick=args.quick
    )
    report["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    runners, settings = build_runners(args)
    report["settings"] = settings
    print(
        f"timing: {args.repeats} rounds; per round every runner makes a block of "
        f"{args.steps} steps ({args.eval_calls} held-out scoring calls), in turn",
        flush=True,
    )
    timing_started = time.perf_counter()
    for round_index in range(args.repeats):
        for runner in runners:
            runner.time_block()
        uniform = next(r for r in runners if r.label == "ml/uniform")
        print(
            f"round {round_index + 1}/{args.repeats}: ml/uniform "
            f"{1e3 * uniform.seconds_per_call[-1]:.3f} ms/step, load average {load_average()}",
            flush=True,
        )
    report["timing_s"] = time.perf_counter() - timing_started
    report["compile_s_total"] = sum(r.compile_s for r in runners)
    report["results"] = summarize(runners, settings)
    report["load_average_end"] = load_average()
    report["peak_memory"] = peak_memory()
    report["wall_s"] = time.perf_counter() - started

    return _common.write_report(out, report, markdown(report))


if __name__ == "__main__":
    main()
