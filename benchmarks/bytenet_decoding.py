"""ByteNet decoding cost: cached time per character against position, and cached against naive.

Full runs (write benchmarks/results/bytenet/decoding.json; minutes on a free 2-core CPU, most of
them in the naive run, whose 1,000 steps each rerun the decoder over 1,000 positions):

    python benchmarks/bytenet_decoding.py                       # enwik8_cpu: 10 MU blocks, d = 96
    python benchmarks/bytenet_decoding.py --config enwik8       # the paper's 30 blocks, d = 512

Seconds, the smoke config (3 blocks of d = 8), 300 positions and a naive length of 100, for a
check of the script (writes its JSON under the temp folder unless --out; compiles at XLA backend
optimisation level 1, as the tests do, so its timings are not ones to report):

    python benchmarks/bytenet_decoding.py --quick

On the GPU machine, in benchmarks/gpu_check.sh:

    timeout 150 python3 benchmarks/bytenet_decoding.py --config enwik8 \
        --out=${OUT:-/tmp}/bytenet_decoding.json 2>&1 | grep -E "^[|]|^target|^device|Error|error"

The issue's decoding items (Kalchbrenner et al., "Neural Machine Translation in Linear Time",
arXiv:1610.10099; deepgen/bytenet): "the time per generated character from position 100 to
position 10,000 stays within 1.2x (linear total time), and cached decoding is at least 20x faster
than naive at length 1,000."

The model: `deepgen.bytenet.model.ByteNet` with the config's model fields and 256 byte values, as
experiments/bytenet/method.py builds the language model, with random initial parameters (the
time of a step does not depend on their values). Decoding samples (temperature
sample.temperature) after a prompt of one byte, batch --batch (1 by default).

1. Time per character against position (cached). A jitted `generate_chunk(params, carry, logits,
   keys, start) -> (carry, logits, tokens)` runs a `lax.scan` of C = --chunk steps of
   `decoding.cached_step` at the traced positions start, ..., start + C - 1: each step samples a
   byte from the previous logits (position 0 feeds the prompt byte instead) exactly as
   `decoding.sample`'s loop does, with the same keys (`jax.random.split(rng, N - 1)`), then feeds
   it. It is compiled once, called once to warm up, then called N / C times from position 0 to
   N = --positions, each call waited for (block_until_ready) and timed: ms per character = the
   call's wall time / C / batch. Reported: the chunk starting at --early (100) and the last
   chunk (ending at N) and their ratio, and the ratio of the medians of the last 5 chunks to the
   first 5 chunks from --early on. Then the early and the last chunk are re-timed alternately
   --interleave_rounds times (20), each from a copy of the state that entered it in the pass:
   the target (<= 1.2) is judged on the ratio of those medians, since in one sequential pass
   position is confounded with the machine's drift over the 10,000 steps (other jobs, clock
   frequency; seen here as a step up after a few thousand positions). The cached step reads each
   layer's last (k - 1) r inputs, so a position past the receptive field costs what any other
   does.
2. Cached against naive at length L = --naive_length (1,000): `decoding.sample` (prompt of one
   byte, L - 1 sampled bytes: L decoder steps, the same keys) with `decoding.naive_step` over an
   `init_naive_carry(batch, L, None)` buffer, which reruns the whole decoder over all L positions
   for every byte, and with `decoding.cached_step`. Each is one jitted `lax.scan` of L steps,
   compiled ahead, then called --repeats times (the fastest call is reported). Speedup = naive /
   cached total time (target >= 20x).
3. Checks, reported (not timed): the chunked generation's first L bytes equal `decoding.sample`'s
   cached ones (same step, same keys), and where the naive and cached samples first differ (the
   two give the same logits up to float rounding; a sample can flip where two choices tie to
   rounding, and every later byte then differs).

Note on the GPU: at batch 1 a cached step is a few hundred small kernels (about ten per block),
so its time is kernel launches, not arithmetic; the naive step does the same launches over L
positions. The ratio reported is the one measured.

Prints a markdown block ready for benchmarks/RESULTS.md (date, host, machine, jax version, load
average, command line) and writes everything, every chunk's time included, to --out as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from benchmarks._common import apply_overrides, load_average, peak_memory  # noqa: E402
from configs import bytenet as bytenet_configs  # noqa: E402
from deepgen.bytenet import decoding  # noqa: E402
from deepgen.bytenet.model import ByteNet, count_params  # noqa: E402
from deepgen.data import enwik8  # noqa: E402

DEFAULT_CONFIG, QUICK_CONFIG = "enwik8_cpu", "smoke"
CONFIGS = ("enwik8_cpu", "enwik8", "smoke")  # the language-model variants
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bytenet" / "decoding.json"
POSITIONS, CHUNK, EARLY, NAIVE_LENGTH = 10_000, 100, 100, 1000
QUICK_POSITIONS, QUICK_CHUNK, QUICK_NAIVE_LENGTH = 300, 20, 100
WINDOW = 5  # chunks in each median of the linearity ratio
LINEAR_BOUND, SPEEDUP_BOUND = 1.2, 20.0
PROMPT_BYTE = ord("<")  # one byte of prompt (enwik8 opens with XML)
SEED = 0


# ---- the model and the decoders ----------------------------------------------------------------


def build_model(config: Any) -> ByteNet:
    """The byte language model of the config, as experiments/bytenet/method.py builds it."""
    m = config.model
    return ByteNet(
        vocab_size=enwik8.VOCAB_SIZE,
        hidden=int(m.hidden),
        decoder_blocks=int(m.decoder_blocks),
        encoder_blocks=int(m.encoder_blocks),
        kernel_size=int(m.kernel_size),
        encoder_kernel_size=int(m.encoder_kernel_size),
        unit=str(m.unit),
        rates=tuple(int(r) for r in m.rates),
        dropout=float(m.dropout),
    )


def make_generate_chunk(
    model: ByteNet, *, chunk: int, prompt_len: int, temperature: float
) -> Callable:
    """generate_chunk(params, carry, logits, keys_C, start, prompt) -> (carry, logits, tokens_BxC).

    Positions start .. start + chunk - 1: the prompt byte below prompt_len, else a byte sampled
    from the previous logits with that position's key (decoding.sample's loop), fed to the step.
    """

    def generate_chunk(params, carry, logits_BxV, keys_C, start, prompt_BxP):
        step = decoding.cached_step(model, params)

        def body(state, inputs):
            carry, logits = state
            key, position = inputs
            sampled_B = jax.random.categorical(key, logits / temperature).astype(jnp.int32)
            prompted_B = prompt_BxP[:, jnp.minimum(position, prompt_len - 1)]
            token_B = jnp.where(position < prompt_len, prompted_B, sampled_B)
            logits, carry = step(carry, token_B, position)
            return (carry, logits), token_B

        positions_C = start + jnp.arange(chunk, dtype=jnp.int32)
        (carry, logits_BxV), tokens_CxB = jax.lax.scan(
            body, (carry, logits_BxV), (keys_C, positions_C)
        )
        return carry, logits_BxV, tokens_CxB.T

    return generate_chunk


def make_sample(model: ByteNet, *, naive: bool, length: int, temperature: float) -> Callable:
    """sample(params, prompt_BxP, rng) -> B x (length - P): decoding.sample over `length` steps."""

    def run(params, prompt_BxP, rng):
        batch, prompt_len = prompt_BxP.shape
        if naive:
            step = decoding.naive_step(model, params)
            carry = decoding.init_naive_carry(batch, length, None)
        else:
            step = decoding.cached_step(model, params)
            carry = decoding.init_cached_carry(model, batch, None)
        return decoding.sample(
            step,
            carry,
            prompt_BxP,
            num_steps=length - prompt_len,
            rng=rng,
            temperature=temperature,
        )

    return run


def _compile(fn: Callable, *args: Any, donate: tuple[int, ...] = ()) -> tuple[Callable, float]:
    """fn jitted and compiled ahead for args; (the compiled program, compile seconds)."""
    started = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return compiled, time.perf_counter() - started


# ---- 1. time per character against position ---------------------------------------------------


def time_chunks(
    model: ByteNet, params: Any, prompt_BxP: jax.Array, rng: jax.Array, args: argparse.Namespace
) -> dict[str, Any]:
    """Generate args.positions bytes in chunks of args.chunk; each chunk's wall time, the tokens."""
    batch, prompt_len = prompt_BxP.shape
    chunk, positions = args.chunk, args.positions
    fn = make_generate_chunk(
        model, chunk=chunk, prompt_len=prompt_len, temperature=args.temperature
    )
    # Position p >= P samples with key p - P of split(rng, N - P), as decoding.sample does; the
    # prompt positions take a key they do not use.
    keys_N = jnp.concatenate([jnp.stack([rng] * prompt_len), jax.random.split(rng, positions - 1)])
    chunk_keys = [keys_N[i : i + chunk] for i in range(0, positions, chunk)]
    starts = [jnp.asarray(i, jnp.int32) for i in range(0, positions, chunk)]
    logits0_BxV = jnp.zeros((batch, enwik8.VOCAB_SIZE), jnp.float32)

    def fresh_carry() -> Any:
        return decoding.init_cached_carry(model, batch, None)

    compiled, compile_s = _compile(
        fn, params, fresh_carry(), logits0_BxV, chunk_keys[0], starts[0], prompt_BxP, donate=(1,)
    )
    jax.block_until_ready(
        compiled(params, fresh_carry(), logits0_BxV, chunk_keys[0], starts[0], prompt_BxP)
    )
    seconds = np.zeros((args.passes, len(starts)))
    tokens = []
    early_index, late_index = min(args.early // chunk, len(starts) - 1), len(starts) - 1
    snapshots: dict[int, Any] = {}
    for p in range(args.passes):
        carry, logits = jax.block_until_ready((fresh_carry(), logits0_BxV))
        pass_tokens = []
        for i, (keys_C, start) in enumerate(zip(chunk_keys, starts, strict=True)):
            if p == 0 and i in (early_index, late_index):  # the state entering the chunk
                snapshots[i] = jax.tree.map(jnp.copy, (carry, logits))
            started = time.perf_counter()
            carry, logits, tokens_BxC = compiled(params, carry, logits, keys_C, start, prompt_BxP)
            jax.block_until_ready((carry, logits, tokens_BxC))
            seconds[p, i] = time.perf_counter() - started
            pass_tokens.append(tokens_BxC)
        tokens = pass_tokens
        print(
            f"pass {p + 1}/{args.passes}: {positions:,} positions in {seconds[p].sum():.3f} s, "
            f"load average {load_average()}",
            flush=True,
        )
    # The same two chunks again, alternately: a slow drift of the machine over the sequential
    # pass (other jobs, frequency) then weighs on both alike.
    interleaved: dict[str, list[float]] = {"early": [], "late": []}
    for _ in range(args.interleave_rounds):
        for name, i in (("early", early_index), ("late", late_index)):
            carry, logits = jax.block_until_ready(jax.tree.map(jnp.copy, snapshots[i]))
            started = time.perf_counter()
            jax.block_until_ready(
                compiled(params, carry, logits, chunk_keys[i], starts[i], prompt_BxP)
            )
            interleaved[name].append(time.perf_counter() - started)
    return {
        "seconds_PxK": seconds,
        "interleaved_s": interleaved,
        "compile_s": compile_s,
        "tokens_BxN": np.asarray(jnp.concatenate(tokens, axis=1)),
    }


def summarize_chunks(
    seconds_PxK: np.ndarray,
    *,
    chunk: int,
    batch: int,
    early: int,
    interleaved_s: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """ms per character of each chunk (median over passes), the early/late chunks, the ratios.

    The target is judged on the interleaved re-timing of the early and the last chunk when
    there is one (position is then not confounded with the machine's drift over the pass),
    else on the medians of the first and last WINDOW chunks of the pass.
    """
    ms_per_char = [float(x) for x in 1e3 * np.median(seconds_PxK, axis=0) / (chunk * batch)]
    num = len(ms_per_char)
    first = min(early // chunk, num - 1)
    window = min(WINDOW, num - first)
    head, tail = ms_per_char[first : first + window], ms_per_char[num - window :]
    early_ms, late_ms = ms_per_char[first], ms_per_char[-1]
    head_ms, tail_ms = statistics.median(head), statistics.median(tail)
    ratio_single, ratio_median = late_ms / early_ms, tail_ms / head_ms
    interleaved: dict[str, Any] = {}
    decisive, judged_on = ratio_median, "ratio_late_to_early_medians"
    if interleaved_s and interleaved_s["early"]:
        to_ms = lambda times: 1e3 * statistics.median(times) / (chunk * batch)
        early_i, late_i = to_ms(interleaved_s["early"]), to_ms(interleaved_s["late"])
        decisive, judged_on = late_i / early_i, "ratio_late_to_early_interleaved"
        interleaved = {
            "interleaved_rounds": len(interleaved_s["early"]),
            "interleaved_ms_per_char": {"early": early_i, "late": late_i},
            "ratio_late_to_early_interleaved": decisive,
        }
    return {
        "chunk_starts": [i * chunk for i in range(num)],
        "ms_per_char_per_chunk": ms_per_char,
        "ms_per_char_per_chunk_per_pass": (1e3 * seconds_PxK / (chunk * batch)).tolist(),
        "early_chunk": {
            "start": first * chunk,
            "end": (first + 1) * chunk,
            "ms_per_char": early_ms,
        },
        "late_chunk": {"start": (num - 1) * chunk, "end": num * chunk, "ms_per_char": late_ms},
        "ratio_late_to_early_single_chunks": ratio_single,
        "median_window_chunks": window,
        "first_window": {
            "start": first * chunk,
            "end": (first + window) * chunk,
            "ms_per_char_median": head_ms,
        },
        "last_window": {
            "start": (num - window) * chunk,
            "end": num * chunk,
            "ms_per_char_median": tail_ms,
        },
        "ratio_late_to_early_medians": ratio_median,
        **interleaved,
        "linear_bound": LINEAR_BOUND,
        "linear_target_met": bool(decisive <= LINEAR_BOUND),
        "linear_target_judged_on": judged_on,
        "linear_target_met_single_chunks": bool(ratio_single <= LINEAR_BOUND),
        "total_s": float(np.median(seconds_PxK.sum(axis=1))),
    }


# ---- 2. cached against naive at length L ------------------------------------------------------


def time_naive_and_cached(
    model: ByteNet, params: Any, prompt_BxP: jax.Array, rng: jax.Array, args: argparse.Namespace
) -> dict[str, Any]:
    """decoding.sample over L positions with the naive and the cached step: times and tokens."""
    out: dict[str, Any] = {}
    for name, naive in (("cached", False), ("naive", True)):
        fn = make_sample(model, naive=naive, length=args.naive_length, temperature=args.temperature)
        compiled, compile_s = _compile(fn, params, prompt_BxP, rng)
        times, tokens = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            tokens = jax.block_until_ready(compiled(params, prompt_BxP, rng))
            times.append(time.perf_counter() - started)
        print(
            f"{name} decoding.sample, {args.naive_length:,} positions: {min(times):.3f} s "
            f"(compile {compile_s:.1f} s)",
            flush=True,
        )
        out[name] = {
            "total_s": min(times),
            "total_s_per_call": times,
            "ms_per_char": 1e3 * min(times) / (args.naive_length * prompt_BxP.shape[0]),
            "compile_s": compile_s,
            "tokens": np.asarray(tokens),
        }
    return out


def first_mismatch(a_BxN: np.ndarray, b_BxN: np.ndarray) -> int | None:
    """The first position (column) where two token arrays differ in any row, or None."""
    differs = np.nonzero((a_BxN != b_BxN).any(axis=0))[0]
    return int(differs[0]) if len(differs) else None


# ---- the report ---------------------------------------------------------------------------------


def _met(flag: bool) -> str:
    return "yes" if flag else "**no**"


def markdown(report: dict[str, Any]) -> str:
    """The block for benchmarks/RESULTS.md."""
    s, c, n = report["settings"], report["position_scaling"], report["naive_vs_cached"]
    early, late = c["early_chunk"], c["late_chunk"]
    head, tail = c["first_window"], c["last_window"]
    L = s["naive_length"]
    lines = [
        "## ByteNet decoding (`benchmarks/bytenet_decoding.py`)",
        "",
        f"{report['date']}, host {report['host']}, {report['machine']}, jax {report['jax']}, "
        f"load average {report['load_average_start']} at start and "
        f"{report['load_average_end']} at the end; peak memory {report['peak_memory']}. "
        f"Command: `{report['command']}`",
        "",
        f"Config {s['config']}: {s['decoder_blocks']} {s['unit']} blocks, d = {s['hidden']}, "
        f"{s['num_params']:,} parameters (random init), receptive field "
        f"{s['receptive_field']} bytes; batch {s['batch']}, prompt of 1 byte, sampling at "
        f"temperature {s['temperature']:g}. Cached: {s['positions']:,} positions in jitted "
        f"chunks of {s['chunk']} steps, each chunk timed (median over {s['passes']} pass(es)); "
        f"naive and cached: `decoding.sample` over L = {L:,} positions, fastest of "
        f"{s['repeats']} call(s).",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| cached ms/char, positions {early['start']:,}-{early['end']:,} | "
        f"{early['ms_per_char']:.4f} | | |",
        f"| cached ms/char, positions {late['start']:,}-{late['end']:,} | "
        f"{late['ms_per_char']:.4f} | | |",
        f"| ratio of those two chunks | {c['ratio_late_to_early_single_chunks']:.3f} | "
        f"<= {LINEAR_BOUND:g} | {_met(c['linear_target_met_single_chunks'])} |",
        f"| cached ms/char, median of chunks {head['start']:,}-{head['end']:,} | "
        f"{head['ms_per_char_median']:.4f} | | |",
        f"| cached ms/char, median of chunks {tail['start']:,}-{tail['end']:,} | "
        f"{tail['ms_per_char_median']:.4f} | | |",
        f"| ratio of the medians | {c['ratio_late_to_early_medians']:.3f} | | |",
        *(
            [
                f"| the same two chunks re-timed alternately, {c['interleaved_rounds']} rounds: "
                f"ms/char early, late | {c['interleaved_ms_per_char']['early']:.4f}, "
                f"{c['interleaved_ms_per_char']['late']:.4f} | | |",
            ]
            if "interleaved_rounds" in c
            else []
        ),
        f"| linear total time: {c['linear_target_judged_on']} | "
        f"{c[c['linear_target_judged_on']]:.3f} | <= {LINEAR_BOUND:g} | "
        f"{_met(c['linear_target_met'])} |",
        f"| naive, L = {L:,}: total s | {n['naive_total_s']:.3f} | | |",
        f"| cached, L = {L:,}: total s | {n['cached_total_s']:.3f} | | |",
        f"| speedup cached over naive at L = {L:,} | {n['speedup']:.1f}x | "
        f">= {SPEEDUP_BOUND:g}x | {_met(n['speedup_target_met'])} |",
        "",
        f"Cached total for {s['positions']:,} positions: {c['total_s']:.3f} s "
        f"({1e3 * c['total_s'] / s['positions'] / s['batch']:.4f} ms/char). Compile: chunk "
        f"{report['compile_s']['chunk']:.1f} s, cached sample {report['compile_s']['cached']:.1f} "
        f"s, naive sample {report['compile_s']['naive']:.1f} s.",
        "",
        "Checks: chunked generation equals `decoding.sample`'s cached bytes at positions "
        f"1-{L - 1:,}: {report['checks']['chunked_matches_sample']}; naive and cached "
        f"samples first differ at position {report['checks']['naive_cached_first_mismatch']} "
        "(None: never; they share logits up to float rounding).",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; --quick uses the smoke config and short lengths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke config, short lengths")
    parser.add_argument(
        "--config",
        default=None,
        choices=CONFIGS,
        help=f"configs/bytenet.py variant (default {DEFAULT_CONFIG}; --quick: {QUICK_CONFIG})",
    )
    parser.add_argument("--out", default=None, help=f"JSON path (default {DEFAULT_OUT})")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded at once")
    parser.add_argument(
        "--positions", type=int, default=None, help=f"cached positions ({POSITIONS:,})"
    )
    parser.add_argument("--chunk", type=int, default=None, help=f"steps per timed call ({CHUNK})")
    parser.add_argument("--early", type=int, default=EARLY, help="start of the early chunk (100)")
    parser.add_argument(
        "--naive_length", type=int, default=None, help=f"L of naive vs cached ({NAIVE_LENGTH:,})"
    )
    parser.add_argument("--passes", type=int, default=1, help="passes over the positions")
    parser.add_argument(
        "--interleave_rounds",
        type=int,
        default=20,
        help="re-time the early and the last chunk alternately this many times (0: off)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="calls of each L-length run")
    parser.add_argument("--temperature", type=float, default=None, help="(sample.temperature)")
    parser.add_argument(
        "--set", action="append", default=[], help="a.b=value override of the config"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.config = args.config or (QUICK_CONFIG if quick else DEFAULT_CONFIG)
    args.positions = args.positions or (QUICK_POSITIONS if quick else POSITIONS)
    args.chunk = args.chunk or (QUICK_CHUNK if quick else CHUNK)
    args.naive_length = args.naive_length or (QUICK_NAIVE_LENGTH if quick else NAIVE_LENGTH)
    if quick:
        args.interleave_rounds = min(args.interleave_rounds, 2)
    if min(args.batch, args.positions, args.chunk, args.passes, args.repeats) < 1:
        parser.error("--batch, --positions, --chunk, --passes and --repeats must be positive")
    if args.positions % args.chunk:
        parser.error(f"--positions={args.positions} must be a multiple of --chunk={args.chunk}")
    if not 0 <= args.early < args.positions:
        parser.error("--early must lie in [0, --positions)")
    if not 2 <= args.naive_length <= args.positions:
        parser.error("--naive_length must lie in [2, --positions]")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Time both parts, print the markdown block, write the JSON; returns the report."""
    started = time.perf_counter()
    args = parse_args(argv)
    _common.compile_quickly(args.quick)
    out = _common.output_path(
        args.out, quick=args.quick, default=DEFAULT_OUT, quick_name="bytenet_decoding_quick.json"
    )
    report: dict[str, Any] = _common.report_header(
        "benchmarks/bytenet_decoding.py", argv, quick=args.quick
    )
    config = apply_overrides(bytenet_configs.get_config(args.config), args.set)
    if config.data.name != "enwik8" or int(config.model.encoder_blocks):
        raise SystemExit(f"--config={args.config} is not a byte language model")
    temperature = args.temperature or float(config.sample.temperature)
    args.temperature = temperature
    model = build_model(config)
    key = jax.random.key(SEED)
    params = jax.jit(model.init)(jax.random.fold_in(key, 0), jnp.zeros((1, 8), jnp.int32))
    rng = jax.random.fold_in(key, 1)
    prompt_BxP = jnp.full((args.batch, 1), PROMPT_BYTE, jnp.int32)
    report["settings"] = {
        "config": args.config,
        "overrides": list(args.set),
        "hidden": int(config.model.hidden),
        "decoder_blocks": int(config.model.decoder_blocks),
        "unit": str(config.model.unit),
        "kernel_size": int(config.model.kernel_size),
        "num_params": count_params(params),
        "receptive_field": model.receptive_field,
        "batch": args.batch,
        "prompt_bytes": 1,
        "temperature": temperature,
        "positions": args.positions,
        "chunk": args.chunk,
        "early": args.early,
        "passes": args.passes,
        "interleave_rounds": args.interleave_rounds,
        "naive_length": args.naive_length,
        "repeats": args.repeats,
        "dtype": "float32",
    }
    s = report["settings"]
    print(
        f"ByteNet {args.config}: {s['num_params']:,} parameters, receptive field "
        f"{s['receptive_field']}; {args.positions:,} cached positions in chunks of {args.chunk}",
        flush=True,
    )
    chunks = time_chunks(model, params, prompt_BxP, rng, args)
    report["position_scaling"] = summarize_chunks(
        chunks["seconds_PxK"],
        chunk=args.chunk,
        batch=args.batch,
        early=args.early,
        interleaved_s=chunks["interleaved_s"],
    )
    runs = time_naive_and_cached(model, params, prompt_BxP, rng, args)
    naive_s, cached_s = runs["naive"]["total_s"], runs["cached"]["total_s"]
    speedup = naive_s / cached_s
    report["naive_vs_cached"] = {
        "length": args.naive_length,
        "naive_total_s": naive_s,
        "cached_total_s": cached_s,
        "naive_ms_per_char": runs["naive"]["ms_per_char"],
        "cached_ms_per_char": runs["cached"]["ms_per_char"],
        "naive_total_s_per_call": runs["naive"]["total_s_per_call"],
        "cached_total_s_per_call": runs["cached"]["total_s_per_call"],
        "speedup": speedup,
        "speedup_bound": SPEEDUP_BOUND,
        "speedup_target_met": bool(speedup >= SPEEDUP_BOUND),
    }
    report["compile_s"] = {
        "chunk": chunks["compile_s"],
        "cached": runs["cached"]["compile_s"],
        "naive": runs["naive"]["compile_s"],
    }
    L = args.naive_length
    sampled_chunked = chunks["tokens_BxN"][:, 1:L]  # position 0 is the prompt byte
    mismatch = first_mismatch(runs["naive"]["tokens"], runs["cached"]["tokens"])
    report["checks"] = {
        "chunked_matches_sample": bool(np.array_equal(sampled_chunked, runs["cached"]["tokens"])),
        "naive_cached_first_mismatch": None if mismatch is None else mismatch + 1,
        "positions_compared": L - 1,
    }
    c, n = report["position_scaling"], report["naive_vs_cached"]
    print(
        f"target linear: ratio of medians {c['ratio_late_to_early_medians']:.3f} "
        f"(single chunks {c['ratio_late_to_early_single_chunks']:.3f}) <= {LINEAR_BOUND:g}: "
        f"{c['linear_target_met']}",
        flush=True,
    )
    print(
        f"target speedup: naive / cached at L = {L:,}: {n['speedup']:.1f}x >= "
        f"{SPEEDUP_BOUND:g}x: {n['speedup_target_met']}",
        flush=True,
    )
    report["load_average_end"] = load_average()
    report["peak_memory"] = peak_memory()
    report["wall_s"] = time.perf_counter() - started
    return _common.write_report(out, report, markdown(report))


if __name__ == "__main__":
    main()
