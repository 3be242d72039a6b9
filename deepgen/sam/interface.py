"""One interface for every memory core of Rae et al. 2016 (SAM, arXiv 1610.09027) and its baselines.

A core is three pure functions over an explicit per-example state (vmap them over the batch):

    size  = core.interface_size(spec)            # controller outputs one step consumes
    state = core.init(spec)                      # the memory before the first step
    state, reads_RxM = core.step(spec, state, interface_I)

`interface_I` is the raw (pre-activation) slice of the controller's linear output p_t (Sec. 3.1:
p_t = (q_t, a_t, alpha_t, gamma_t) for SAM); each core applies its own squashing (sigmoid for
gates, softplus for strengths) and documents the layout. `reads_RxM` are the R read words r_t
that the controller sees at the next step and that its output layer reads (Supp. Fig. 6).

Cores (`kind`): `ntm` (Graves et al. 2014 addressing, dense), `dam` (dense access memory:
SAM's read and write rules with dense weights and discounted usage U^(1)), `sam` (Eqs. 4-6,
sparse, usage U^(2)), `dnc` (Graves et al. 2016, dense temporal links), `sdnc` (SAM plus the
sparse temporal links of Eqs. 17-22). `registry()` maps kind to core.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

KINDS = ("ntm", "dam", "sam", "dnc", "sdnc")
SEARCHES = ("exact", "blocked", "approx", "host")


@dataclasses.dataclass(frozen=True)
class MemorySpec:
    """Static sizes and choices of a memory core (hashable, so it can be a jit static argument)."""

    kind: str = "sam"
    num_words: int = 128  # N
    word_size: int = 32  # M (Supp. E: 32)
    num_heads: int = 4  # R read heads (Supp. C: 4 access heads); one write head
    num_reads: int = 4  # K words per sparse read head (Supp. C: K = 4)
    usage_delta: float = 0.005  # delta of U^(2), Sec. 3.3 (SAM, SDNC)
    usage_discount: float = 0.99  # lambda of U^(1) (DAM); the paper gives no value [ours]
    num_links: int = 8  # K_L of the sparse temporal links (Sec. 3.5: K_L = 8)
    num_shifts: int = 3  # NTM's allowed shifts (-1, 0, 1)
    search: str = "exact"  # neighbour search of sparse reads: one of SEARCHES
    search_block: int = 65536  # words per block of the blocked exact search
    dtype: Any = None  # memory dtype; None means float32


class MemoryCore(NamedTuple):
    """The three pure functions of a core (see the module docstring)."""

    interface_size: Callable[[MemorySpec], int]
    init: Callable[[MemorySpec], Any]
    step: Callable[[MemorySpec, Any, jax.Array], tuple[Any, jax.Array]]


# kind -> (module, attribute); modules are imported on first use.
_CORES = {
    "ntm": ("deepgen.sam.memory", "NTM"),
    "dam": ("deepgen.sam.memory", "DAM"),
    "sam": ("deepgen.sam.memory", "SAM"),
    "dnc": ("deepgen.sam.dnc", "DNC"),
    "sdnc": ("deepgen.sam.dnc", "SDNC"),
}


def core(kind: str) -> MemoryCore:
    """The MemoryCore of a kind in KINDS."""
    if kind not in _CORES:
        raise ValueError(f"memory kind {kind!r} is not one of {KINDS}")
    module, attribute = _CORES[kind]
    return getattr(importlib.import_module(module), attribute)


def registry() -> dict[str, MemoryCore]:
    """Every core by kind."""
    return {kind: core(kind) for kind in KINDS}
