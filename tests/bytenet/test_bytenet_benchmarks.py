"""benchmarks/bytenet_decoding.py and bytenet_throughput.py: the quick runs' JSON and its sums.

Timing itself is the benchmarks' business, not the suite's: the decoding script runs at the smoke
sizes and must write what its report says; the throughput script's transformer must match the
parameter count it claims and its ratio be the quotient of the numbers beside it.
"""

import json
import math
import statistics
import types

import jax
import jax.numpy as jnp

from benchmarks import bytenet_decoding, bytenet_throughput
from deepgen.bytenet.model import count_params


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _header_ok(report: dict) -> None:
    for key in ("date", "host", "machine", "jax", "device_count", "command", "peak_memory"):
        assert report[key], key
    assert report["quick"] and "--quick" in report["command"]


def test_decoding_quick_run_reports_per_chunk_times_and_the_two_targets(tmp_path):
    out = tmp_path / "x.json"
    report = bytenet_decoding.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    _header_ok(report)

    s = report["settings"]
    assert s["config"] == bytenet_decoding.QUICK_CONFIG and s["batch"] == 1
    assert s["positions"] == bytenet_decoding.QUICK_POSITIONS
    assert s["naive_length"] == bytenet_decoding.QUICK_NAIVE_LENGTH
    assert s["num_params"] > 0
    assert s["receptive_field"] == 1 + 2 * (1 + 2 + 4)  # smoke: 3 blocks, k = 3

    c = report["position_scaling"]
    ms = c["ms_per_char_per_chunk"]
    assert len(ms) == s["positions"] // s["chunk"] == len(c["chunk_starts"])
    assert all(_positive(x) for x in ms)
    first = s["early"] // s["chunk"]
    assert c["early_chunk"]["start"] == s["early"] and c["early_chunk"]["ms_per_char"] == ms[first]
    assert c["late_chunk"]["end"] == s["positions"] and c["late_chunk"]["ms_per_char"] == ms[-1]
    w = c["median_window_chunks"]
    assert c["first_window"]["ms_per_char_median"] == statistics.median(ms[first : first + w])
    assert c["last_window"]["ms_per_char_median"] == statistics.median(ms[-w:])
    assert math.isclose(c["ratio_late_to_early_single_chunks"], ms[-1] / ms[first])
    ratio = c["last_window"]["ms_per_char_median"] / c["first_window"]["ms_per_char_median"]
    assert math.isclose(c["ratio_late_to_early_medians"], ratio)
    # Linearity is judged on the early and late chunks re-timed alternately.
    assert c["interleaved_rounds"] == s["interleave_rounds"] == 2
    interleaved = c["interleaved_ms_per_char"]
    assert _positive(interleaved["early"]) and _positive(interleaved["late"])
    ratio = interleaved["late"] / interleaved["early"]
    assert c["linear_target_judged_on"] == "ratio_late_to_early_interleaved"
    assert math.isclose(c["ratio_late_to_early_interleaved"], ratio)
    assert c["linear_target_met"] == (ratio <= bytenet_decoding.LINEAR_BOUND)

    n = report["naive_vs_cached"]
    assert _positive(n["naive_total_s"]) and _positive(n["cached_total_s"])
    assert math.isclose(n["speedup"], n["naive_total_s"] / n["cached_total_s"])
    assert n["speedup_target_met"] == (n["speedup"] >= bytenet_decoding.SPEEDUP_BOUND)
    # The chunked loop is decoding.sample's, with the same keys: the same bytes.
    assert report["checks"]["chunked_matches_sample"]


def test_throughput_transformer_matches_the_parameter_count_and_the_ratio_is_the_quotient():
    """Without compiling (a full --quick run costs two train-step compiles, about 12 s from a
    cold cache): the count formula against the built model, the shape search, the summary."""
    for layers, width in ((1, 16), (4, 192), (3, 130)):
        model = bytenet_throughput.TransformerLM(
            vocab_size=256,
            width=width,
            num_layers=layers,
            num_heads=bytenet_throughput.num_heads_for(width),
            max_len=499,
        )
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
        assert count_params(shapes) == bytenet_throughput.transformer_param_count(
            layers=layers, width=width, vocab=256, max_len=499
        )
    # enwik8_cpu's ByteNet (10 MU blocks, d = 96) and the paper's (30, d = 512).
    for target in (1_997_056, 159_152_384):
        layers, width = bytenet_throughput.transformer_shape(target, vocab=256, max_len=499)
        count = bytenet_throughput.transformer_param_count(
            layers=layers, width=width, vocab=256, max_len=499
        )
        assert abs(count / target - 1) <= 0.05 and 32 <= width / layers <= 128

    runners = [
        types.SimpleNamespace(label=label, metrics={"loss": 2.0}, compile_s=1.0)
        for label in ("bytenet", "transformer")
    ]
    settings = {
        "bytenet": {"num_params": 100},
        "transformer": {"num_params": 98},
        "chars_fed_per_step": 3992,
        "chars_scored_per_step": 3200,
    }
    per_round = {"bytenet": [0.3, 0.2, 0.4], "transformer": [0.5, 0.6, 0.4]}
    rows = bytenet_throughput.summarize(runners, per_round, settings)
    assert math.isclose(rows["bytenet"]["steps_per_s"], 1 / 0.3)
    assert math.isclose(rows["transformer"]["chars_per_s"], 3992 / 0.5)
    assert math.isclose(rows["ratio_bytenet_to_transformer_chars_per_s"], 0.5 / 0.3)
    assert rows["ratio_per_round"] == [0.5 / 0.3, 0.6 / 0.2, 0.4 / 0.4]
