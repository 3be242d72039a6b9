"""benchmarks/vpn_speed.py: the quick run's JSON and its sums (timing is the benchmark's business)."""

import json
import math

from benchmarks import vpn_speed


def test_speed_quick_run_reports_training_and_both_samplers(tmp_path):
    out = tmp_path / "speed.json"
    report = vpn_speed.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for key in ("date", "machine", "jax", "command", "peak_memory"):
        assert report[key], key
    train, sample = report["training"], report["sampling"]
    assert train["frames_per_sequence"] == 4 and train["num_params"] > 0
    expected = train["batch"] * (train["frames_per_sequence"] - 1) / train["seconds_per_step"]
    assert math.isclose(train["frames_per_second"], expected, rel_tol=1e-9)
    assert sample["pixels"] == 144 and not sample["naive_scaled"]
    assert sample["cached_equals_naive"] is True  # the whole naive frame, compared
    speedup = sample["naive_seconds_per_frame"] / sample["cached_seconds_per_frame"]
    assert math.isclose(sample["speedup"], speedup, rel_tol=1e-9)
    assert report["target_met"] == (sample["speedup"] >= vpn_speed.SPEEDUP_BOUND)
