"""Device mesh and shardings built from the config (data parallel by default, FSDP on request).

The mesh has two axes, ("data", "fsdp"). The batch is split over both; parameters and optimiser
state are replicated over "data" and, when the "fsdp" axis is larger than one, each array is
split along its largest dimension that the axis size divides (ZeRO-3 style, as in big_vision).
"""

import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepgen.core.errors import ConfigError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolve one -1 in the axis sizes so that their product is the number of devices."""
    unknown = [name for name in MESH_AXES if int(axis_sizes[name]) == -1]
    if len(unknown) > 1:
        raise ConfigError(f"mesh: at most one axis may be -1, got {dict(axis_sizes)}")
    known = math.prod(int(axis_sizes[n]) for n in MESH_AXES if n not in unknown)
    if known <= 0 or num_devices % known:
        raise ConfigError(
            f"mesh {dict(axis_sizes)} does not fit {num_devices} devices: "
            f"the product of the axis sizes must divide {num_devices}"
        )
    sizes = {n: (num_devices // known if n in unknown else int(axis_sizes[n])) for n in MESH_AXES}
    if math.prod(sizes.values()) != num_devices:
        raise ConfigError(
            f"mesh {dict(axis_sizes)} uses {math.prod(sizes.values())} of {num_devices} devices: "
            "set one axis to -1 or make the product equal the device count"
        )
    return tuple(sizes[n] for n in MESH_AXES)


def make_mesh(axis_sizes: Mapping[str, int], num_devices: int | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over every device JAX sees (or the first num_devices of them)."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    shape = mesh_shape(axis_sizes, num_devices)
    devices = np.asarray(jax.devices()[:num_devices]).reshape(shape)
    return Mesh(devices, MESH_AXES)


def leading_axis_shardings(abstract_state, mesh: Mesh):
    """Every leaf split along its leading axis (vmapped seeds) over the data axis."""
    spec = PartitionSpec("data")
    return jax.tree.map(lambda _: NamedSharding(mesh, spec), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device."""
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> PartitionSpec:
    """Split the largest dimension that fsdp_size divides; small arrays stay replicated."""
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(abstract_state, mesh: Mesh, *, fsdp_min_size: int = 2**14):
    """Shardings for a pytree of arrays: replicated, or FSDP-split when the fsdp axis is > 1."""
    fsdp_size = mesh.shape["fsdp"]

    def leaf_sharding(leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, fsdp_spec(shape, fsdp_size, fsdp_min_size))

    return jax.tree.map(leaf_sharding, abstract_state)
