"""The peer of benchmarks/sam_scaling.py: the PyPI `dnc` package's SAM, one forward and backward.

Run by benchmarks/sam_scaling.py with the peer's interpreter (a venv holding torch, faiss-cpu and
numpy; no deepgen import here), one process per memory size so that each size's peak RSS is its
own:

    /tmp/peer/bin/python benchmarks/sam_peer_runner.py --words 10000 --dnc_path /tmp/peer_dnc2

Prints one JSON object on its last stdout line. The package is `dnc` 2.0.0b1 from PyPI, whose
modules are those of ixaxaar/pytorch-dnc at HEAD cf6f682 (`--dnc_path` puts a
`pip install --no-deps --target DIR dnc==2.0.0b1` first on sys.path; without it the
interpreter's own `dnc` is used: 1.1.0, the newest non-pre-release, cannot run the backward pass
on torch 2.x, "one of the variables needed for gradient computation has been modified by an
inplace operation", its in-place `scatter_` on state that `gather` saved; 2.0 replaced those with
clone + scatter). The model is `dnc.SAM` (`dnc/sam.py` + `dnc/sparse_memory.py`) with the sizes
of deepgen's benchmark (Rae et al. 2016, Supp. E): nr_cells = N, cell_size 32, read_heads 4,
sparse_reads K = 4, a one-layer LSTM of 100 units (num_layers=1, num_hidden_layers=1; the
package's default is 2), interface from one linear layer (independent_linears=False), batch 8,
T = 100 steps of 8 random bits in, and a sigmoid cross-entropy of the package's output layer
(back to input_size = 8) against random target bits. Timed: forward and `loss.backward()` of
one 100-step sequence on the CPU with `torch.set_num_threads(--threads)` and faiss's OpenMP
threads set alike.

State: the first call (hx = None) creates and trains the batch's FAISS indices and runs one
sequence (reported as setup_s); every later call passes the previous memory state, detached,
with reset_experience=True, which erases the memory and resets (does not retrain) the indices.
So the timed calls are steady-state sequences. Per step the package clones the whole memory
(b x N x M), the usage and both weight vectors (b x N) to avoid in-place updates, and `gather`
keeps each step's memory for the backward pass: O(N M) time and memory per step.

Run-time patch (`patch_faiss_index`, reported in the JSON): a placeholder class
`faiss.GpuResources` (0: faiss-cpu has none, and `FAISSIndex.__init__`'s signature annotates
`res: faiss.GpuResources | None`, so dnc/faiss_index.py does not even import), then
`FAISSIndex.__init__` replaced by a copy of the original with three lines changed:

1. `self.res = res if res else faiss.StandardGpuResources()` -> `self.res = res`, unless the
   device is CUDA: faiss-cpu has no StandardGpuResources (the CPU branch below it never uses it).
2. `self.index.nprobes = self.probes` -> `self.index.nprobe = self.probes`: faiss 1.15's Python
   wrapper raises AttributeError on the misspelt name (where a wrapper accepted it, nprobe kept
   its default of 1); the original's intent (index_checks = 32 probes) is kept.
3. `torch.randn(self.nr_cells * 100, self.cell_size)` -> `torch.randn(self.nr_cells, ...)`:
   `train()` passes only the first nr_cells rows to faiss (`train_c(self.nr_cells, ...)`), so
   the other 99 N rows (1.3 GB per index at N = 1e5) were never read.
Construction (`build_sam`): `SAM.__init__` first runs `DNC.__init__`, which builds a dense
`dnc.memory.Memory` with `1 - torch.eye(nr_cells)` (N^2 floats: 40 GB at N = 1e5) and then
discards it for the SparseMemory; an empty stub module stands in for it while the model is built
(it is never used; only the random initial parameter values differ).
And one setup shortcut: the first index of a size is trained and the others are copies of it
(`faiss.clone_index`), where the original trains each example's index; that changes setup_s
only. `train`, `reset`, `add`, `search` and the rest of the package run unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

PATCH = [
    "faiss.GpuResources = an empty placeholder class (absent from faiss-cpu; dnc/faiss_index.py "
    "names it in an annotation evaluated at import)",
    "dnc.SAM built with dnc.dnc.Memory swapped for an empty stub module during the constructor "
    "(DNC.__init__ builds a dense Memory, 1 - eye(N): N^2 floats, which SAM.__init__ then "
    "discards; restored after; the built model holds no stub)",
    "dnc/faiss_index.py FAISSIndex.__init__, a copy of the original with: (1) self.res = "
    "res (no faiss.StandardGpuResources(), absent from faiss-cpu) unless the device is CUDA; "
    "(2) self.index.nprobe = self.probes instead of the misspelt self.index.nprobes (an "
    "AttributeError in faiss 1.15); (3) torch.randn(nr_cells, cell_size) instead of "
    "torch.randn(nr_cells * 100, cell_size), of which train() reads only the first nr_cells "
    "rows; and the batch's indices of one size are clones (faiss.clone_index) of one trained "
    "index instead of each trained (setup only)",
]


def status_bytes(field: str) -> int | None:
    """A kB field of /proc/self/status in bytes (None off Linux); also used by sam_scaling.py."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int | None:
    """VmHWM of this process (the peak resident set since the last reset_peak_rss)."""
    return status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def patch_faiss_index() -> type:
    """Replace dnc.faiss_index.FAISSIndex.__init__ (module docstring); returns the class."""
    import faiss
    import torch

    if not hasattr(faiss, "GpuResources"):  # (0) named in an annotation of __init__
        faiss.GpuResources = type("GpuResources", (), {})
    from dnc import faiss_index

    trained: dict[tuple[int, int, int], object] = {}

    def __init__(  # noqa: N807 - the patched constructor, the package's argument names
        self,
        cell_size=20,
        nr_cells=1024,
        K=4,
        num_lists=32,
        probes=32,
        res=None,
        train=None,
        device=None,
    ):
        self.cell_size = cell_size
        self.nr_cells = nr_cells
        self.probes = probes
        self.K = K
        self.num_lists = num_lists
        self.device = device
        cuda = self.device is not None and self.device.type == "cuda"
        self.res = res if res or not cuda else faiss.StandardGpuResources()  # (1)
        key = (cell_size, nr_cells, num_lists)
        if not cuda and train is None and key in trained:  # setup shortcut
            self.index = faiss.clone_index(trained[key])
            self.index.nprobe = self.probes
            return
        train_tensor = train if train is not None else torch.randn(self.nr_cells, self.cell_size)
        if cuda:
            self.res.setTempMemoryFraction(0.01)
            self.res.initializeForDevice(self.device.index if self.device.index is not None else 0)
            quantizer = faiss.IndexFlatL2(self.cell_size)
            self.index = faiss.GpuIndexIVFFlat(
                self.res, quantizer, self.cell_size, self.num_lists, faiss.METRIC_L2
            )
        else:
            quantizer = faiss.IndexFlatL2(self.cell_size)
            self.index = faiss.IndexIVFFlat(
                quantizer, self.cell_size, self.num_lists, faiss.METRIC_L2
            )
        self.index.nprobe = self.probes  # (2)
        self.train(train_tensor)
        if not cuda and train is None:
            trained[key] = self.index

    faiss_index.FAISSIndex.__init__ = __init__
    return faiss_index.FAISSIndex


def detached(state):
    """The package's hidden state with every tensor detached (nested lists and dicts)."""
    import torch

    if torch.is_tensor(state):
        return state.detach()
    if isinstance(state, dict):
        return {k: detached(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detached(v) for v in state)
    return state


def build_sam(**kwargs):
    """`dnc.SAM(**kwargs)`, its discarded dense DNC memory replaced by a stub while it is built.

    `SAM.__init__` first runs `DNC.__init__`, which builds a dense `dnc.memory.Memory` of
    nr_cells words (its `1 - torch.eye(nr_cells)` alone is N^2 floats: 40 GB at N = 1e5) and
    then replaces it by the `SparseMemory` (same attribute name, `self.memories` reset): the
    dense one is never used. A stub stands in for it during construction.
    """
    import torch
    from dnc import dnc as dnc_module
    from dnc import sam as sam_module

    class DiscardedMemory(torch.nn.Module):
        def __init__(self, **_):
            super().__init__()

    dense = dnc_module.Memory
    dnc_module.Memory = DiscardedMemory
    try:
        model = sam_module.SAM(**kwargs)
    finally:
        dnc_module.Memory = dense
    assert not any(isinstance(m, DiscardedMemory) for m in model.modules())
    return model


def dnc_version(module) -> str | None:
    """The installed dnc distribution's version (from its dist-info next to the package)."""
    from importlib import metadata
    from pathlib import Path

    for path in Path(module.__file__).parents[1].glob("dnc-*.dist-info"):
        return metadata.Distribution.at(path).version
    return getattr(module, "__version__", None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, required=True, help="N (nr_cells)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100, help="T")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--reads", type=int, default=4, help="K (sparse_reads)")
    parser.add_argument("--word_size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--bits", type=int, default=8, help="input (and output) size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="calls after the setup call")
    parser.add_argument("--repeats", type=int, default=5, help="at most; fewer when slow")
    parser.add_argument("--max_seconds", type=float, default=120.0, help="timed-call budget")
    parser.add_argument("--dnc_path", default=None, help="put this folder first on sys.path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.dnc_path:
        sys.path.insert(0, args.dnc_path)
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import dnc

    patch_faiss_index()

    result: dict = {
        "N": args.words,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "dnc": dnc_version(dnc),
        "dnc_file": dnc.__file__,
        "python": sys.version.split()[0],
        "threads": args.threads,
        "patch": PATCH,
    }
    rnn = build_sam(
        input_size=args.bits,
        hidden_size=args.hidden,
        rnn_type="lstm",
        num_layers=1,
        num_hidden_layers=1,
        nr_cells=args.words,
        sparse_reads=args.reads,
        read_heads=args.heads,
        cell_size=args.word_size,
        independent_linears=False,
        batch_first=True,
    )
    result["parameters"] = sum(p.numel() for p in rnn.parameters())
    inputs = (torch.rand(args.batch, args.steps, args.bits) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    state: dict = {"mhx": None, "targets": None}

    def call() -> float:
        rnn.zero_grad(set_to_none=True)
        mhx = state["mhx"]
        started = time.perf_counter()
        output, (_, mhx, _) = rnn(inputs, (None, mhx, None), reset_experience=True)
        if state["targets"] is None:  # 2.0 returns (T, B, O) even with batch_first
            state["targets"] = (torch.rand(output.shape) > 0.5).float()
        loss = loss_fn(output, state["targets"])
        loss.backward()
        elapsed = time.perf_counter() - started
        state["mhx"] = detached(mhx)
        return elapsed

    rss_start = peak_rss_bytes()
    result["setup_s"] = call()  # creates and trains the indices, then one sequence
    result["peak_rss_setup_bytes"] = peak_rss_bytes()
    warm = result["setup_s"]
    for _ in range(args.warmup):
        warm = call()
    result["warmup_s"] = warm
    result["peak_rss_reset"] = reset_peak_rss()
    times: list[float] = []
    budget = args.max_seconds
    while len(times) < args.repeats and (not times or sum(times) + times[-1] <= budget):
        times.append(call())
    result["times_s"] = times
    result["median_s"] = statistics.median(times)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["rss_start_bytes"] = rss_start
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
