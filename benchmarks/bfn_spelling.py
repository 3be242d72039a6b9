"""Spelling accuracy of text8 BFN samples: the original sampler against BFN-Solver at n steps.

    python benchmarks/bfn_spelling.py --workdir=runs/text8_cpu --n_steps=10,25,50,100

The metric of Xue et al. (arXiv 2404.15766, Sec. 6, text8), computed against the training text
instead of a hunspell dictionary: the fraction of generated complete words (each sample split on
spaces, its partial first and last word dropped) that occur in the training split's vocabulary.
The workdir holds a model trained with `python -m experiments.main --config=configs/bfn.py:text8_cpu
--workdir=...` (--train trains it there first when it has no checkpoint); the model is rebuilt from
--variant and --set, so pass the overrides it was trained with. The standard errors come from a
bootstrap over samples (words of one sample are not independent); the binomial one is printed too.
Two reference rows: real held-out windows of the test split (the ceiling) and i.i.d. characters
drawn from the training letter frequencies (the floor). Prints a markdown table and writes it to
--out. Nothing is recorded in RESULTS.md.
"""

import argparse
import datetime
import functools
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import parse_config, steps_table  # noqa: E402
from configs import bfn as bfn_configs  # noqa: E402
from deepgen.bfn import sampler, solver  # noqa: E402
from deepgen.core.errors import UserError  # noqa: E402
from deepgen.data import text8  # noqa: E402
from experiments import runner  # noqa: E402
from experiments.bfn.method import BFN  # noqa: E402

SAMPLER_NAMES = {
    "bfn": "original BFN sampler (sampler.sample_discrete)",
    "sde1": "BFN-Solver1, SDE",
    "sde2": "BFN-Solver2 (multistep), SDE",
    "ode1": "BFN-Solver1, ODE",
    "ode2": "BFN-Solver2 (multistep), ODE",
}


def complete_words(texts: list[str]) -> list[list[str]]:
    """Per text, the words between its first and last space (the partial end words dropped)."""
    return [[w for w in text.split(" ")[1:-1] if w] for text in texts]


def _ratio(hits: np.ndarray, counts: np.ndarray, picks: np.ndarray) -> tuple[float, float]:
    """sum(hits) / sum(counts) and its bootstrap standard error over the rows in picks."""
    total = counts.sum()
    ratio = hits.sum() / total if total else float("nan")
    boot = hits[picks].sum(1) / np.maximum(counts[picks].sum(1), 1)
    return float(ratio), float(boot.std(ddof=1))


def spelling_accuracy(
    texts: list[str], vocabulary: set[str], *, resamples: int, seed: int, min_length: int = 3
) -> dict[str, float]:
    """Fraction of complete words in the vocabulary (all, and those of >= min_length letters)."""
    per_text = complete_words(texts)
    long_words = [[w for w in words if len(w) >= min_length] for words in per_text]
    picks = np.random.default_rng(seed).integers(0, len(texts), (resamples, len(texts)))
    result = {}
    for key, groups in (("", per_text), ("long_", long_words)):
        hits = np.array([sum(w in vocabulary for w in words) for words in groups], np.float64)
        counts = np.array([len(words) for words in groups], np.float64)
        accuracy, stderr = _ratio(hits, counts, picks)
        result[f"{key}accuracy"] = accuracy
        result[f"{key}stderr_bootstrap"] = stderr
        result[f"{key}num_words"] = int(counts.sum())
    total = result["num_words"]
    accuracy = result["accuracy"]
    lengths = [len(w) for words in per_text for w in words]
    result["stderr_binomial"] = float(np.sqrt(accuracy * (1 - accuracy) / max(total, 1)))
    result["mean_word_length"] = float(np.mean(lengths)) if lengths else float("nan")
    return result


def make_sampler(experiment, name: str, n_steps: int, batch_size: int):
    """A jitted (params, rng) -> samples for one sampler and number of steps."""

    flow = experiment.flow

    def run(params, rng):
        def log_probs_fn(theta, t_B, rng_net):
            return flow.log_probs(params, theta, t_B, train=False, rng=rng_net)

        common = dict(
            rng=rng,
            batch_size=batch_size,
            variable_shape=experiment.variable_shape,
            num_classes=experiment.num_classes,
            n_steps=n_steps,
            beta1=flow.beta1,
        )
        if name == "bfn":
            return sampler.sample_discrete(log_probs_fn, **common)[0]
        return solver.sample_discrete(log_probs_fn, solver=name, **common)[0]

    return jax.jit(run)


def main() -> None:
    """Restore (or train) the model, sample with every sampler at every n, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a text8 BFN workdir with checkpoints")
    parser.add_argument("--variant", default="text8_cpu", choices=sorted(bfn_configs.VARIANTS))
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
    parser.add_argument("--train", action="store_true", help="train into --workdir if it is empty")
    parser.add_argument("--samplers", default="bfn,ode1,ode2,sde2")
    parser.add_argument("--n_steps", default="10,25,50,100")
    parser.add_argument("--num_samples", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=256, help="samples per jitted call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument(
        "--ode_reference_steps", type=int, default=400, help="0 skips the ODE agreement table"
    )
    parser.add_argument("--out", default="bfn_spelling.md", help="markdown file to write")
    args = parser.parse_args()

    samplers = [s for s in args.samplers.split(",") if s]
    for name in samplers:
        if name not in SAMPLER_NAMES:
            parser.error(f"--samplers: {name!r} is not one of {tuple(SAMPLER_NAMES)}")
    n_steps = [int(n) for n in args.n_steps.split(",")]
    config = parse_config(args.variant, args.set)
    if config.data.name != "text8":
        parser.error(f"--variant={args.variant} is not a text8 variant")
    experiment = BFN(config)
    ckpt_dir = Path(args.workdir) / "checkpoints"
    if args.train and not (ckpt_dir.is_dir() and any(ckpt_dir.iterdir())):
        runner.run(BFN, config, args.workdir, mode="train")
    try:
        state = experiment.restore(args.workdir)
    except UserError as error:
        sys.exit(f"error: {error}")
    params = experiment.eval_params(state)
    step = int(jax.device_get(state.step))

    data_dir, source = config.data.dir or None, config.data.source
    train_tokens = text8.load_text8("train", data_dir=data_dir, source=source).tokens_N
    vocabulary = set(text8.decode(train_tokens).split())
    test_tokens = text8.load_text8("test", data_dir=data_dir, source=source).tokens_N
    seq_len = experiment.variable_shape[0]
    rng_np = np.random.default_rng(args.seed)
    starts = rng_np.integers(0, len(test_tokens) - seq_len + 1, args.num_samples)
    real = [text8.decode(w) for w in text8.take_windows(test_tokens, starts, seq_len)]
    letter_freq = np.bincount(train_tokens, minlength=experiment.num_classes) / len(train_tokens)
    iid = rng_np.choice(experiment.num_classes, (args.num_samples, seq_len), p=letter_freq)
    stat = functools.partial(
        spelling_accuracy, vocabulary=vocabulary, resamples=args.resamples, seed=args.seed
    )
    references = {
        "real held-out text (test split windows)": stat(real),
        "i.i.d. characters at the training letter frequencies": stat(
            [text8.decode(r) for r in iid]
        ),
    }

    batch = min(args.batch_size, args.num_samples)
    results: dict[tuple[str, int], dict] = {}
    examples: dict[tuple[str, int], list[str]] = {}
    tokens: dict[tuple[str, int], np.ndarray] = {}

    def generate(name: str, n: int) -> tuple[np.ndarray, float]:
        run = make_sampler(experiment, name, n, batch)
        started = time.perf_counter()
        rows = [
            np.asarray(run(params, jax.random.fold_in(jax.random.key(args.seed), b)))
            for b in range(-(-args.num_samples // batch))
        ]
        return np.concatenate(rows)[: args.num_samples], time.perf_counter() - started

    for name in samplers:
        for n in n_steps:
            tokens[name, n], seconds = generate(name, n)
            texts = [text8.decode(row) for row in tokens[name, n]]
            results[name, n] = {**stat(texts), "seconds": seconds}
            examples[name, n] = texts[:3]
            r = results[name, n]
            print(
                f"{name:>5} n={n:<4} accuracy {r['accuracy']:.3f} +- {r['stderr_bootstrap']:.3f} "
                f"({r['num_words']} words, mean length {r['mean_word_length']:.2f}, "
                f"{seconds:.1f} s incl. compile)",
                flush=True,
            )
    # The ODE solvers are deterministic given the start (the same rng): their distance to a
    # fine solution of the same ODE is the discretisation error with the trained network.
    agreement = {}
    ode_names = [name for name in samplers if name.startswith("ode")]
    if ode_names and args.ode_reference_steps:
        reference, _ = generate("ode2", args.ode_reference_steps)
        for name in ode_names:
            for n in n_steps:
                agreement[name, n] = float(np.mean(tokens[name, n] == reference))

    def table(title: str, cell, reference_cell) -> list[str]:
        rows = [
            (SAMPLER_NAMES[name], [cell(results[name, n]) for n in n_steps]) for name in samplers
        ]
        rows += [(label, [reference_cell(r)] * len(n_steps)) for label, r in references.items()]
        return ["", title, "", *steps_table("sampler", n_steps, rows)]

    device = jax.devices()[0]
    lines = [
        f"## BFN spelling accuracy on text8-style data ({datetime.date.today()})",
        "",
        f"Model: `{args.variant}` {' '.join(args.set)} restored from `{args.workdir}` at step "
        f"{step} ({experiment.num_params():,} params, EMA={bool(config.eval.use_ema)}), "
        f"{args.num_samples} samples x {seq_len} characters per cell, seed {args.seed}; "
        f"{device.device_kind} ({jax.default_backend()}), {platform.machine()}, jax {jax.__version__}.",
        f"Vocabulary: the {len(vocabulary):,} distinct words of the training split. Accuracy = "
        "fraction of complete words (partial first/last word of each sample dropped) found in it; "
        f"+- is the bootstrap standard error over samples ({args.resamples} resamples). "
        "Every sampler makes n + 1 network calls (n steps and the t = 1 readout).",
    ]
    accuracy = lambda r: f"{r['accuracy']:.3f} +- {r['stderr_bootstrap']:.3f}"
    lines += table("Spelling accuracy, all complete words:", accuracy, accuracy)
    long_accuracy = lambda r: f"{r['long_accuracy']:.3f} +- {r['long_stderr_bootstrap']:.3f}"
    lines += table(
        "Spelling accuracy, complete words of 3 or more letters (short strings are mostly "
        "in the vocabulary by chance):",
        long_accuracy,
        long_accuracy,
    )
    length = lambda r: f"{r['mean_word_length']:.2f} ({r['num_words']})"
    lines += table("Mean complete-word length and number of complete words:", length, length)
    if agreement:
        lines += [
            "",
            f"ODE solvers: fraction of characters equal to the n = {args.ode_reference_steps} "
            "ode2 solution from the same start (same rng), i.e. the discretisation error with "
            "the trained network:",
            "",
        ]
        agreement_rows = [
            (SAMPLER_NAMES[name], [f"{agreement[name, n]:.3f}" for n in n_steps])
            for name in ode_names
        ]
        lines += steps_table("solver", n_steps, agreement_rows)
    lines += ["", "First samples (`_` marks a space):", ""]
    for name in samplers:
        for n in (n_steps[0], n_steps[-1]):
            for text in examples[name, n][:2]:
                lines.append(f"    {name:>5} n={n:<4} {text.replace(' ', '_')}")
    for text in real[:2]:
        lines.append(f"    {'real':>5}        {text.replace(' ', '_')}")
    lines += ["", f"Command: `python benchmarks/bfn_spelling.py {' '.join(sys.argv[1:])}`", ""]
    report = "\n".join(lines)
    print(report)
    Path(args.out).write_text(report)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
