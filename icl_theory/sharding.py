"""The run axis over devices: runs never talk to each other, so each device runs its share alone.

`shard_runs` pads a pytree's leading run axis to a multiple of the device count
and places it on a 1-d 'runs' mesh; `per_run(fn, sharding)` maps `fn` over the
runs with `shard_map` of a `vmap`, so the compiled program holds no cross-device
collective (the partitioner left to itself once put one in the evaluation, and
the CPU runtime deadlocked on it).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

RUNS = PartitionSpec("runs")


def run_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding:
  return NamedSharding(Mesh(np.array(list(devices or jax.devices())), ("runs",)), RUNS)


def shard_runs(tree: Any, devices: Sequence[jax.Device] | None = None) -> tuple[Any, NamedSharding]:
  """Places a pytree with a leading run axis on a 'runs' mesh over `devices` (default: all).

  The run axis is padded, by repeating the last run, to a multiple of the device
  count; callers keep the first R entries of what comes back.
  """
  sharding = run_sharding(devices)
  num_devices = sharding.mesh.size

  def pad(x):
    x = np.asarray(x)
    extra = -x.shape[0] % num_devices
    return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])

  return jax.device_put(jax.tree.map(pad, tree), sharding), sharding


def per_run(fn: Callable, sharding: NamedSharding) -> Callable:
  """`fn` (one run's arguments -> one run's outputs) over the sharded run axis, device by device."""
  # check_vma=False: the body has no collectives, and scan carries would need pvary otherwise.
  return jax.shard_map(jax.vmap(fn), mesh=sharding.mesh, in_specs=RUNS, out_specs=RUNS, check_vma=False)
