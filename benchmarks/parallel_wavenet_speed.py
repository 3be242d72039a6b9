"""Parallel WaveNet speed: the teacher's cached against naive generation, and the student's parallel
sampling against the teacher's cached generation, at the paper's sizes (or a config's).

Full run (writes benchmarks/results/parallel_wavenet/speed.json; minutes on a free 2-core CPU):

    python benchmarks/parallel_wavenet_speed.py                  # the paper's teacher and student
    python benchmarks/parallel_wavenet_speed.py --config teacher_cpu

Seconds, the smoke sizes, for a check of the script (writes under the temp folder; compiled at
XLA backend optimisation level 1, so its timings are not ones to report):

    python benchmarks/parallel_wavenet_speed.py --quick

On the GPU machine, in benchmarks/gpu_check.sh:

    timeout 240 python3 benchmarks/parallel_wavenet_speed.py --batch 16 \
        --out=${OUT:-/tmp}/parallel_wavenet_speed.json

The issue's performance items (van den Oord et al., arXiv:1711.10433; deepgen/parallel_wavenet):
"cached teacher generation at least 100x faster per sample than naive at the paper's depth; the
student's parallel sampling at least 100x the samples per second of the teacher's cached
generation at the paper's sizes", and on a GPU at least 2 million student samples per second.

Parameters are random (a step's time does not depend on their values); the conditioning is
random log-mel frames of the config's shape and speaker 0.

1. Teacher generation, cached: `generation.generate(cached=True)` of --teacher_samples samples,
   one `lax.scan` (the per-layer ring buffers update in place), compiled first: samples per
   second, and its inverse, seconds per sample. Also reported: one cached step
   (`WaveNet.step` plus the mixture sample) as its own jitted call with the caches donated,
   --steps x 20 calls.
2. Teacher, naive, per sample: the whole network over the receptive_field + 1 positions that one
   sample needs, then the sample (one iteration of the naive generator's scan past the first
   window), jitted, warmed up, called --steps times. The cached speedup is naive / cached seconds
   per sample. The two generators are equal sample for sample (tests/parallel_wavenet).
3. Student: the IAF on --student_samples logistic noise samples per sequence at batch --batch, one
   jitted call (all positions at once), compiled first, fastest of --repeats: samples per second.
   Ratio: student / teacher (item 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from benchmarks._common import peak_memory  # noqa: E402
from configs import parallel_wavenet as pw_configs  # noqa: E402
from deepgen.layers.discretized_logistic import mix_logistic_sample  # noqa: E402
from deepgen.parallel_wavenet import generation  # noqa: E402
from deepgen.parallel_wavenet.student import IAFStudent  # noqa: E402
from deepgen.parallel_wavenet.wavenet import WaveNet, dilation_cycle, split_mixture  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "parallel_wavenet" / "speed.json"
CACHED_BOUND = STUDENT_BOUND = 100.0
NUM_SPEAKERS = 2


def models(config) -> tuple[WaveNet, IAFStudent]:
    """The teacher and student of a config (as experiments/parallel_wavenet/method.py builds them)."""
    t, s = config.teacher, config.student
    hop = int(config.data.hop_length)
    teacher = WaveNet(
        residual_features=int(t.residual_features),
        gate_features=int(t.gate_features),
        skip_features=int(t.skip_features),
        kernel_size=int(t.kernel_size),
        dilations=dilation_cycle(int(t.num_layers), int(t.dilation_cycle)),
        num_mixtures=int(t.num_mixtures),
        hop=hop,
        num_speakers=NUM_SPEAKERS,
        speaker_features=int(t.speaker_features),
    )
    student = IAFStudent(
        flow_layers=tuple(int(n) for n in s.flow_layers),
        residual_features=int(s.residual_features),
        gate_features=int(s.gate_features),
        kernel_size=int(s.kernel_size),
        dilation_cycle_length=int(s.dilation_cycle),
        hop=hop,
        num_speakers=NUM_SPEAKERS,
        speaker_features=int(t.speaker_features),
    )
    return teacher, student


def _per_call(fn, args, steps: int) -> float:
    out = jax.block_until_ready(fn(*args))  # compile and warm up
    start = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, choices=sorted(pw_configs.VARIANTS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per path")
    parser.add_argument("--teacher_samples", type=int, default=None)
    parser.add_argument("--student_samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    _common.compile_quickly(args.quick)
    name = args.config or ("teacher_smoke" if args.quick else "teacher")
    config = pw_configs.get_config(name)
    steps = args.steps or (3 if args.quick else 5)
    rate = int(config.data.sample_rate)
    teacher_samples = args.teacher_samples or (128 if args.quick else 1000)
    student_samples = args.student_samples or (512 if args.quick else rate)
    out = _common.output_path(
        args.out, quick=args.quick, default=DEFAULT_OUT, quick_name="parallel_wavenet_speed.json"
    )
    report = _common.report_header("benchmarks/parallel_wavenet_speed.py", argv, quick=args.quick)
    teacher, student = models(config)
    batch, hop, mels = args.batch, teacher.hop, int(config.data.num_mels)
    window = teacher.receptive_field + 1
    key = jax.random.key(0)

    frames = -(-max(window, teacher_samples, student_samples) // hop)
    mel = jax.random.normal(key, (batch, frames, mels))
    speaker = jnp.zeros((batch,), jnp.int32)
    t_params = teacher.init(key, jnp.zeros((1, hop)), mel[:1, :1], speaker[:1])["params"]

    # 1. One sample, cached against naive.
    caches = teacher.init_cache(batch)
    condition_window = teacher.apply(
        {"params": t_params}, mel, speaker, window, method=WaveNet.condition
    )

    def cached_step(params, caches, previous, condition, key):
        out, caches = teacher.apply(
            {"params": params}, caches, previous, condition, method=WaveNet.step
        )
        logits, means, log_scales = split_mixture(out)
        return mix_logistic_sample(key, logits, means, log_scales, num_bins=65536), caches

    def naive_step(params, audio, condition, key):
        out = teacher.apply({"params": params}, audio, condition, method=WaveNet.from_condition)
        logits, means, log_scales = split_mixture(out[:, -1])
        return mix_logistic_sample(key, logits, means, log_scales, num_bins=65536)

    cached_step_fn = jax.jit(cached_step, donate_argnums=1)  # the caches update in place
    previous, last_condition = jnp.zeros((batch,)), condition_window[:, -1]
    _, caches = cached_step_fn(t_params, caches, previous, last_condition, key)  # compile
    jax.block_until_ready(caches)
    start = time.perf_counter()
    for _ in range(steps * 20):
        previous, caches = cached_step_fn(t_params, caches, previous, last_condition, key)
    jax.block_until_ready(caches)
    cached_call_s = (time.perf_counter() - start) / (steps * 20)
    naive_s = _per_call(
        jax.jit(naive_step),
        (t_params, jnp.zeros((batch, window)), condition_window, key),
        steps,
    )

    # 2. Cached generation end to end.
    condition = teacher.apply(
        {"params": t_params}, mel, speaker, teacher_samples, method=WaveNet.condition
    )
    generate = jax.jit(
        lambda p, c, k: generation.generate(
            teacher, p, c, k, num_samples=teacher_samples, batch=batch
        )
    )
    jax.block_until_ready(generate(t_params, condition, key))
    start = time.perf_counter()
    jax.block_until_ready(generate(t_params, condition, key))
    teacher_rate = batch * teacher_samples / (time.perf_counter() - start)

    # 3. The student, all positions at once.
    s_params = student.init(key, jnp.zeros((1, hop)), mel[:1, :1], speaker[:1])["params"]
    z = jax.random.logistic(key, (batch, student_samples))
    student_fn = jax.jit(lambda p, z, m, s: student.apply({"params": p}, z, m, s)[0])
    student_args = (s_params, z, mel[:, : -(-student_samples // hop)], speaker)
    jax.block_until_ready(student_fn(*student_args))
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(student_fn(*student_args))
        best = min(best, time.perf_counter() - start)
    student_rate = batch * student_samples / best

    cached_s = batch / teacher_rate  # seconds per step of the generator's own scan
    cached_speedup = naive_s / cached_s
    student_ratio = student_rate / teacher_rate
    report |= {
        "settings": {
            "config": name,
            "batch": batch,
            "steps": steps,
            "teacher_samples": teacher_samples,
            "student_samples": student_samples,
            "sample_rate": rate,
        },
        "teacher": {
            "layers": len(teacher.dilations),
            "receptive_field": teacher.receptive_field,
            "cached_seconds_per_sample": cached_s / batch,
            "cached_step_call_seconds": cached_call_s,
            "naive_seconds_per_sample": naive_s / batch,
            "cached_speedup": cached_speedup,
            "generation_samples_per_second": teacher_rate,
        },
        "student": {
            "flow_layers": list(student.flow_layers),
            "samples_per_second": student_rate,
            "ratio_to_teacher": student_ratio,
            "real_time_factor": student_rate / rate,
        },
        "targets": {
            "cached_at_least_100x_naive": cached_speedup >= CACHED_BOUND,
            "student_at_least_100x_teacher": student_ratio >= STUDENT_BOUND,
        },
        "peak_memory": peak_memory(),
    }
    markdown = "\n".join(
        [
            f"{report['date']}, {report['machine']}, jax {report['jax']}, load "
            f"{report['load_average_start']}: `{report['command']}`",
            "",
            "| what | number |",
            "|---|---|",
            f"| teacher ({len(teacher.dilations)} layers, receptive field "
            f"{teacher.receptive_field}), cached generation (lax.scan) | "
            f"{cached_s / batch * 1e3:.3f} ms/sample |",
            f"| teacher, one cached step as its own jitted call (caches donated) | "
            f"{cached_call_s / batch * 1e3:.3f} ms/sample |",
            f"| teacher, naive step (the receptive field recomputed) | "
            f"{naive_s / batch * 1e3:.1f} ms/sample |",
            f"| cached speedup | {cached_speedup:.0f}x |",
            f"| teacher cached generation, batch {batch} | {teacher_rate:,.0f} samples/s |",
            f"| student {tuple(student.flow_layers)}, batch {batch} | {student_rate:,.0f} "
            f"samples/s ({student_rate / rate:.1f}x real time at {rate} Hz) |",
            f"| student / teacher | {student_ratio:.0f}x |",
            "",
            f"targets: cached >= {CACHED_BOUND:g}x naive: "
            f"{'met' if cached_speedup >= CACHED_BOUND else 'NOT met'}; student >= "
            f"{STUDENT_BOUND:g}x teacher: {'met' if student_ratio >= STUDENT_BOUND else 'NOT met'}",
        ]
    )
    return _common.write_report(out, report, markdown)


if __name__ == "__main__":
    main()
