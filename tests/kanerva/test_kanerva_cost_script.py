"""benchmarks/kanerva_cost.py: the quick run's JSON, and its rule for skipping slow points.

Only the memory part runs here (`--parts=memory`): the train-step part times the Kanerva and VAE
smoke steps, which tests/kanerva/test_kanerva_method.py already compiles and runs, and it doubled
this file's time. Timing itself is the benchmark's business, not the suite's.
"""

import json
import math
import types

from benchmarks import kanerva_cost


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_quick_run_writes_finite_positive_timings_of_every_part(tmp_path, capsys):
    out = tmp_path / "kanerva_cost.json"
    report = kanerva_cost.main(["--quick", "--parts=memory", f"--out={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))

    for key in ("date", "host", "machine", "jax", "device_count", "command", "peak_memory"):
        assert report[key], key
    assert report["quick"] and "--quick" in report["command"]
    assert report["load_average_start"] and report["load_average_end"]

    settings = report["memory_settings"]
    assert settings["code_size"] == kanerva_cost.CODE_SIZE
    assert settings["Ks"] == list(kanerva_cost.QUICK_KS)
    assert settings["Ts"] == list(kanerva_cost.QUICK_TS)
    points = {(K, settings["fixed_T"]) for K in settings["Ks"]}
    points |= {(settings["fixed_K"], T) for T in settings["Ts"]}
    rows = report["memory"]
    assert {(r["K"], r["T"], r["op"]) for r in rows} == {
        (K, T, op) for K, T in points for op in kanerva_cost.OPS
    }
    for r in rows:
        assert r["note"] == "", r  # nothing is skipped at the quick sizes
        for key in ("ms_per_call_median", "ms_per_call_min", "us_per_episode_median"):
            assert _positive(r[key]), (r, key)
        assert r["ms_per_call_min"] <= r["ms_per_call_median"]
        assert r["timed_calls"] >= 3
        if r["op"] == "write_sequential":  # the same posterior as write_batch, in float32
            agreement = r["relative_difference_from_write_batch"]
            assert agreement["R"] < 1e-4 and agreement["U"] < 1e-4, agreement

    for axis, sizes in (("K", settings["Ks"]), ("T", settings["Ts"])):
        entries = report["memory_scaling"][axis]
        assert [e["size"] for e in entries] == sizes
        for i, entry in enumerate(entries):
            for op in kanerva_cost.OPS:
                assert _positive(entry[op]["ms_per_call_median"])
                exponent = entry[op]["exponent_from_previous"]
                assert (exponent is None) == (i == 0)
                assert exponent is None or math.isfinite(exponent)

    assert "train_step" not in report or not report["train_step"]

    printed = capsys.readouterr().out
    assert "## Kanerva Machine memory and train step" in printed
    assert "| ms / call, T = 8 | K = 8 | K = 16 |" in printed


def test_a_point_predicted_slower_than_max_call_s_is_skipped_with_a_note():
    args = types.SimpleNamespace(code_size=100, episodes=16, max_call_s=1.0)
    # write_batch took 0.1 s at T = 32: at least cubic in T, 0.1 * 4^3 = 6.4 s at T = 128.
    # read took 0.01 s, linear in T at least: 0.04 s. kl does not depend on T.
    history = {op: [(32, 0.01, None)] for op in kanerva_cost.OPS}
    history["write_batch"] = [(32, 0.1, None)]
    reasons = kanerva_cost.point_skip_reasons(32, 128, args, history, "T")
    assert "predicted 6.4 s" in reasons["write_batch"]
    assert reasons["write_sequential"] is None
    for op in kanerva_cost.NEEDS_POSTERIOR:  # they read write_batch's posterior
        assert reasons[op] == "skipped: needs write_batch's posterior"
    # A measured exponent above the operation count's is the one used.
    history = {op: [] for op in kanerva_cost.OPS}
    history["read"] = [(32, 0.01, None), (64, 0.08, 3.0)]
    reasons = kanerva_cost.point_skip_reasons(256, 32, args, history, "K")
    assert "predicted 5.1 s" in reasons["read"] and "exponent 3.0" in reasons["read"]
    assert all(reasons[op] is None for op in kanerva_cost.OPS if op != "read")
