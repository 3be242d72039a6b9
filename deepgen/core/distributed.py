"""Multi-host start-up and per-process slices of the global batch.

`jax.distributed.initialize` runs only when asked (the --distributed flag or DEEPGEN_DISTRIBUTED=1).
On CPU it uses gloo collectives, which lets tests run several processes on one machine.
"""

import contextlib
import os

import jax
import numpy as np
from jax.sharding import NamedSharding

from deepgen.core.errors import ConfigError

ENV_FLAG = "DEEPGEN_DISTRIBUTED"


def distributed_requested(flag: bool) -> bool:
    """True when the flag or the DEEPGEN_DISTRIBUTED environment variable asks for multi-host."""
    return flag or os.environ.get(ENV_FLAG, "").lower() in ("1", "true", "yes")


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Start jax.distributed; arguments left None are auto-detected (TPU pods, SLURM, ...)."""
    # Only the CPU backend reads this; it lets several CPU processes run collectives. Newer JAX
    # releases may default to gloo or rename the option, so its absence is not an error.
    with contextlib.suppress(AttributeError, ValueError):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def process_slice(global_batch_size: int) -> slice:
    """The rows of the global batch that this process loads."""
    count, index = jax.process_count(), jax.process_index()
    if global_batch_size % count:
        raise ConfigError(
            f"train.batch_size={global_batch_size} must be divisible by the number of "
            f"processes ({count})"
        )
    per_process = global_batch_size // count
    return slice(index * per_process, (index + 1) * per_process)


def global_batch(local_batch, sharding: NamedSharding):
    """Assemble process-local numpy arrays into global jax.Arrays split over the batch axis."""

    def to_global(local: np.ndarray) -> jax.Array:
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        return jax.make_array_from_process_local_data(sharding, local, global_shape)

    return jax.tree.map(to_global, local_batch)
