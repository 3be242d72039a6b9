"""benchmarks/bytenet_decoding.py and bytenet_throughput.py: the quick runs' JSON and its sums.

Timing itself is the benchmarks' business, not the suite's: these check that each script runs at
the smoke sizes, writes what its report says, and that every ratio is the quotient of the numbers
it reports beside it.
"""

import json
import math
import statistics

from benchmarks import bytenet_decoding, bytenet_throughput


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


def test_throughput_quick_run_matches_parameter_counts_and_reports_the_ratio(tmp_path):
    out = tmp_path / "x.json"
    report = bytenet_throughput.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    _header_ok(report)

    s, r = report["settings"], report["results"]
    assert s["config"] == bytenet_throughput.QUICK_CONFIG
    bytenet_params, tf_params = s["bytenet"]["num_params"], s["transformer"]["num_params"]
    assert abs(tf_params / bytenet_params - 1) <= 0.05
    assert (
        r["bytenet"]["num_params"] == bytenet_params and r["transformer"]["num_params"] == tf_params
    )
    assert s["chars_fed_per_step"] == s["batch_size"] * (s["seq_len"] - 1)
    assert s["chars_scored_per_step"] == s["batch_size"] * (s["seq_len"] - s["context"])
    for label in ("bytenet", "transformer"):
        row = r[label]
        assert len(row["ms_per_step_per_round"]) == s["repeats"]
        for key in ("ms_per_step_median", "steps_per_s", "chars_per_s", "scored_chars_per_s"):
            assert _positive(row[key]), (label, key)
        assert math.isclose(row["steps_per_s"], 1e3 / row["ms_per_step_median"])
        assert math.isclose(row["chars_per_s"], s["chars_fed_per_step"] * row["steps_per_s"])
        assert row["loss_finite"]
    assert math.isclose(
        r["ratio_bytenet_to_transformer_chars_per_s"],
        r["bytenet"]["chars_per_s"] / r["transformer"]["chars_per_s"],
    )

    # The shape search at the paper's size (30 MU blocks, d = 512: 159,152,384 parameters).
    layers, width = bytenet_throughput.transformer_shape(159_152_384, vocab=256, max_len=499)
    count = bytenet_throughput.transformer_param_count(
        layers=layers, width=width, vocab=256, max_len=499
    )
    assert abs(count / 159_152_384 - 1) <= 0.05 and 32 <= width / layers <= 128
