"""Test set-up: 2 fake CPU devices, set before JAX starts, and shared helpers.

Compiled programs go to a persistent cache inside the checkout (.jax_cache, git-ignored), shared
by the pytest workers and the subprocesses the tests start, so that a program compiled by one
test (a smoke model's train step, say) is loaded, not recompiled, by the next. A fresh clone
starts with an empty cache.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Two fake devices: every sharded path (data parallel, FSDP, batch splitting) runs on a real mesh,
# and each jitted step is not split eight ways on two cores (the suite ran ~15% slower with 8).
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
# Tests compile far more than they run. XLA's backend optimisation level 1 compiles faster than
# the default (3) and runs as fast: on 2 cores a BFN smoke training run took 17.4 s against 22.5 s
# and a CIFAR smoke eval 12.3 s against 12.9 s (level 0 compiled in 15.8 s but ran that eval in
# 42 s). Tests compare runs made under the same flags, or float64 references with tolerances.
#
# XLA's CPU fusion emitters compile about a quarter slower than its older LLVM emitters and run
# no faster at these sizes: the init and train-step compiles of four smoke models took 14.7-14.9 s
# without them against 19.2-19.3 s with them, each step as fast (benchmarks/compile_flags.py).
#
# LLVM's expensive passes off: the same compiles took 33.9 s against 39.6 s (2026-12-07, session
# 15, `benchmarks/compile_flags.py`, each step as fast).
# An XLA that does not know a flag aborts at start-up, so the flags are added only once a child
# process has started JAX with them (in pytest's first process; its workers inherit them).
TEST_XLA_FLAGS = (
    "--xla_backend_optimization_level=1",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_llvm_disable_expensive_passes=true",
)


def _xla_accepts(flags: str) -> bool:
    env = {**os.environ, "XLA_FLAGS": flags}
    probe = [sys.executable, "-c", "import jax; jax.devices('cpu')"]
    return subprocess.run(probe, env=env, capture_output=True, timeout=120).returncode == 0


if os.environ.get("DEEPGEN_TEST_XLA_FLAGS_SET") != "1":
    _given = os.environ.get("XLA_FLAGS", "")
    _new = [f for f in TEST_XLA_FLAGS if f.split("=")[0] not in _given]
    _all = " ".join([_given, *_new]).strip()
    if _new and not _xla_accepts(_all):
        _all = " ".join([_given, *[f for f in _new if _xla_accepts(f"{_given} {f}")]]).strip()
    os.environ["XLA_FLAGS"] = _all
    os.environ["DEEPGEN_TEST_XLA_FLAGS_SET"] = "1"

# Tests press Ctrl-C (in this process and in the runs they start). A suite started with SIGINT
# ignored (a background job of a non-interactive shell, nohup) would pass that on to every worker
# and child, and those tests would wait out their timeouts: give Python's handler back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


def read_jsonl(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def train_losses(workdir: Path) -> dict[int, float]:
    """step -> logged train loss."""
    return {
        r["step"]: r["loss"]
        for r in read_jsonl(Path(workdir) / "metrics.jsonl")
        if r["split"] == "train" and "loss" in r
    }


def run_cli(
    args: list[str], *, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m experiments.main ARGS` in a fresh process from the repository root."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def signal_when(
    args: list[str], marker: str, signum: int, *, timeout: float = 240
) -> tuple[int, str]:
    """Run experiments.main ARGS, send signum once a line contains marker; (status, the rest)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.main", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + timeout
    for line in proc.stdout:
        if marker in line:
            proc.send_signal(signum)
            break
        assert time.time() < deadline, f"never saw {marker!r}"
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, rest


def assert_one_line_error(capsys, expected: str) -> None:
    """stderr holds exactly one line, and it contains expected."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Config paths like configs/bfn.py are relative to the repository root."""
    monkeypatch.chdir(REPO_ROOT)


# The files that take longest from a cold compile cache (seconds summed over their tests in the
# whole suite on 2 workers, 2026-12-07, session 12), scheduled first: with `--dist loadfile` a
# worker takes a whole file, and a long file handed out last leaves the other worker idle.
SLOW_FILES_FIRST = (
    "tests/experiments/test_contract.py",  # 159 s: every method's smoke variant
    "tests/experiments/test_bfn_cifar_e2e.py",  # 45 s
    "tests/experiments/test_bfn_e2e.py",  # 33 s
    "tests/sam/test_sam_method.py",  # 30 s
    "tests/parallel_wavenet/test_parallel_wavenet_model.py",  # 26 s
    "tests/acn/test_acn_model.py",  # 25 s
    "tests/snap/test_snap_e2e.py",  # 24 s
    "tests/bytenet/test_bytenet_model.py",  # 23 s
    "tests/vpn/test_vpn_model.py",  # 23 s
    "tests/snap/test_estimators.py",  # 22 s
    "tests/kanerva/test_kanerva_method.py",  # 22 s
    "tests/experiments/test_user_problems.py",  # 22 s
    "tests/curriculum/test_signals.py",  # 21 s
)


def pytest_collection_modifyitems(config, items):
    """Puts SLOW_FILES_FIRST ahead of the rest (longest first), the order otherwise unchanged."""
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}

    def key(item):
        path = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT).as_posix()
        return rank.get(path, len(rank))

    items.sort(key=key)
