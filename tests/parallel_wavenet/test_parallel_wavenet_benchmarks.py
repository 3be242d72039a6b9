"""benchmarks/parallel_wavenet_speed.py: the quick run's JSON and its sums (timing is the
benchmark's business, not the suite's)."""

import json
import math

from benchmarks import parallel_wavenet_speed as speed


def test_speed_quick_run_reports_both_generators_and_the_student(tmp_path):
    out = tmp_path / "speed.json"
    report = speed.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for key in ("date", "machine", "jax", "command", "peak_memory"):
        assert report[key], key
    teacher, student = report["teacher"], report["student"]
    assert teacher["layers"] == 4 and teacher["receptive_field"] == 33
    ratio = teacher["naive_seconds_per_sample"] / teacher["cached_seconds_per_sample"]
    assert math.isclose(teacher["cached_speedup"], ratio, rel_tol=1e-9)
    assert math.isclose(
        student["ratio_to_teacher"],
        student["samples_per_second"] / teacher["generation_samples_per_second"],
        rel_tol=1e-9,
    )
    assert report["targets"]["cached_at_least_100x_naive"] == (teacher["cached_speedup"] >= 100)
