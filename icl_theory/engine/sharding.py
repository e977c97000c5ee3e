"""Where a training program's runs and batches live: over runs, or over the batch.

A program trains R runs (a leading run axis on every leaf of its state). There
are two ways to spread it over the devices, each a `Placement`:

- `over_runs(devices)`: each device trains its share of the runs alone (a
  sweep). The run axis is padded to a multiple of the device count and mapped
  with `shard_map` of a `vmap`, so the compiled program holds no cross-device
  collective (the partitioner left to itself once put one in the evaluation,
  and the CPU runtime deadlocked on it).
- `over_data(devices)`: every run is replicated and each step's batch is split
  over a 'data' mesh axis (one big run, data-parallel). The samplers mark their
  batch axis with `shard_batch`; XLA's partitioner then draws each device's
  slice of the batch on that device and all-reduces the gradient. The draws
  are the same numbers as on one device (they are functions of flat counters),
  so the loss curve matches single-device training up to the order of float
  sums.

Devices default to this process's own (`jax.local_devices()`): under
`jax.distributed` each process trains its runs on its own devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

RUNS = PartitionSpec("runs")
DATA = "data"

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def cpu_cores() -> int:
  """Cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_cpu_cores(divides: int | None = None) -> int:
  """Asks XLA for one CPU device per core, so that runs and batches can use every core.

  An XLA CPU device runs a program's small kernels one after another on about one
  thread (only large elementwise loops are split over the cores), so a sweep of
  small runs uses about one core per device. With `divides` (a data-parallel batch size)
  the count is the largest one up to the cores that divides it. Does nothing, and
  returns 0, where XLA_FLAGS already sets the count, or where the platform is not
  the CPU (JAX_PLATFORMS); call it before JAX starts its backends (the command
  lines do, first thing). GPUs and TPUs are untouched: the flag is about CPUs.
  """
  flags, platforms = os.environ.get("XLA_FLAGS", ""), os.environ.get("JAX_PLATFORMS", "")
  if _DEVICE_COUNT_FLAG in flags or (platforms and not platforms.startswith("cpu")):
    return 0
  cores = cpu_cores()
  count = max(c for c in range(1, cores + 1) if divides is None or divides % c == 0)
  os.environ["XLA_FLAGS"] = f"{flags} {_DEVICE_COUNT_FLAG}={count}".strip()
  return count


def _mesh(devices: Sequence[jax.Device] | None, axis: str) -> Mesh:
  return Mesh(np.array(list(devices or jax.local_devices())), (axis,))


def run_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding:
  return NamedSharding(_mesh(devices, "runs"), RUNS)


def shard_runs(tree: Any, devices: Sequence[jax.Device] | None = None) -> tuple[Any, NamedSharding]:
  """Places a pytree with a leading run axis on a 'runs' mesh over `devices` (default: this process's).

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


def run_shapes(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
  """The shapes, dtypes and shardings that `shard_runs(tree, devices)` would give, without placing anything.

  Leaves may be arrays or `jax.ShapeDtypeStruct`s. For compiling a program ahead
  of its data (`jit(...).lower(shapes).compile()`), e.g. on another thread.
  """
  sharding = run_sharding(devices)
  num_devices = sharding.mesh.size

  def shape(x):
    (runs, *rest), dtype = _shape_and_dtype(x)
    return jax.ShapeDtypeStruct((runs + -runs % num_devices, *rest), dtype, sharding=sharding)

  return jax.tree.map(shape, tree)


def _shape_and_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
  """A leaf's shape and the dtype it has once on a device (float64 -> float32 without jax_enable_x64)."""
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    x = np.asarray(x)
  return tuple(x.shape), jax.dtypes.canonicalize_dtype(x.dtype)


def vmap_runs(fn: Callable) -> Callable:
  """`jax.vmap(fn)` over a leading run axis; a run axis of size 1 is squeezed instead of mapped.

  The same numbers, but XLA on CPU compiles a size-1 batch dimension into slower
  kernels: one LSA training step (d = n = 10, batch 2048) took 1.29 ms vmapped over
  one run and 0.86 ms without the run axis.
  """
  batched = jax.vmap(fn)

  def mapped(*args):
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(args)}
    if sizes != {1}:
      return batched(*args)
    out = fn(*jax.tree.map(lambda x: x[0], args))
    return jax.tree.map(lambda x: x[None], out)

  return mapped


def per_run(fn: Callable, sharding: NamedSharding, one_at_a_time: bool = False) -> Callable:
  """`fn` (one run's arguments -> one run's outputs) over the sharded run axis, device by device.

  Each device vmaps `fn` over its runs, or with `one_at_a_time` loops over them
  (`lax.map`): the same numbers; for Monte Carlo evaluation, whose batches of
  per-run draws are large, the loop compiled and ran a third faster on the CPU.
  """
  def each(*args):
    return jax.lax.map(lambda run_args: fn(*run_args), args) if one_at_a_time else vmap_runs(fn)(*args)

  # check_vma=False: the body has no collectives, and scan carries would need pvary otherwise.
  return jax.shard_map(each, mesh=sharding.mesh, in_specs=RUNS, out_specs=RUNS, check_vma=False)


def chunk_devices(num_chunks: int, devices: Sequence[jax.Device] | None = None) -> list[jax.Device]:
  """The most of `devices` (default: this process's) whose count divides `num_chunks`: `summed_over_chunks`'."""
  devices = list(devices or jax.local_devices())
  return devices[:max(c for c in range(1, len(devices) + 1) if num_chunks % c == 0)]


def summed_over_chunks(fn: Callable, keys: jax.Array, shared: Any, devices: Sequence[jax.Device]) -> Any:
  """sum_c fn(keys[c], shared) over a leading axis of chunk keys, the chunks split over `devices`.

  For Monte Carlo estimates whose chunks are independent: each device loops over its
  share of the chunks (`lax.map`, bounded memory) and the partial sums are added
  across devices, so a CPU with a device per core evaluates on every core. The
  same draws as one device; the sums agree to float32 rounding (another order).
  `shared` (any pytree) is replicated; the chunk count must be a multiple of len(devices).
  `fn` must not do linear algebra (SVD, eigh, solves): on forced host CPU devices those
  deadlocked the CPU runtime when several devices ran them at once (`Group.eval_devices`).
  """
  local = lambda keys_local, shared_: jax.tree.map(lambda x: x.sum(0),
                                                    jax.lax.map(lambda k: fn(k, shared_), keys_local))
  if len(devices) == 1:
    return local(keys, shared)
  def each(keys_local, shared_):
    return jax.lax.psum(local(keys_local, shared_), "chunks")
  mesh = Mesh(np.array(list(devices)), ("chunks",))
  return jax.shard_map(each, mesh=mesh, in_specs=(PartitionSpec("chunks"), PartitionSpec()),
                       out_specs=PartitionSpec(), check_vma=False)(keys, shared)


def data_parallel(mesh: Mesh) -> contextlib.AbstractContextManager:
  """While tracing inside this context (JAX's own mesh context), `shard_batch` splits batch axes over 'data'."""
  return jax.set_mesh(mesh)


def shard_batch(tree: Any, axis: int = 0) -> Any:
  """Marks axis `axis` of every leaf as the batch: split over 'data' in a data-parallel trace, else as is.

  Samplers call it on what they return; it changes no value, only where the
  values are computed.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA not in mesh.axis_names or mesh.size == 1:
    return tree

  def constrain(x):
    spec = [None] * x.ndim
    spec[axis] = DATA
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))

  return jax.tree.map(constrain, tree)


@dataclasses.dataclass(frozen=True)
class Placement:
  """How a program over R runs is laid out on devices; see the module docstring."""
  mesh: Mesh
  data_parallel: bool
  one_at_a_time: bool = False  # over runs: each device loops over its runs (`per_run`) instead of vmapping

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def devices(self) -> list[jax.Device]:
    return list(self.mesh.devices.flat)

  def place(self, tree: Any) -> Any:
    """Puts host arrays with a leading run axis on the devices (over runs: padded to the device count)."""
    if self.data_parallel:
      return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))
    return shard_runs(tree, self.devices)[0]

  def shapes(self, tree: Any) -> Any:
    """What `place(tree)` would give, as `jax.ShapeDtypeStruct`s: for compiling ahead of the data."""
    if self.data_parallel:
      replicated = NamedSharding(self.mesh, PartitionSpec())
      return jax.tree.map(lambda x: jax.ShapeDtypeStruct(*_shape_and_dtype(x), sharding=replicated), tree)
    return run_shapes(tree, self.devices)

  def map(self, fn: Callable) -> Callable:
    """`fn` on one run's arguments -> the same over the run axis, laid out by this placement."""
    if self.data_parallel:
      return vmap_runs(fn)
    return per_run(fn, NamedSharding(self.mesh, RUNS), self.one_at_a_time)

  def tracing(self) -> contextlib.AbstractContextManager:
    """The context to trace (lower) this placement's programs in."""
    return data_parallel(self.mesh) if self.data_parallel else contextlib.nullcontext()


def over_runs(devices: Sequence[jax.Device] | None = None, one_at_a_time: bool = False) -> Placement:
  return Placement(_mesh(devices, "runs"), data_parallel=False, one_at_a_time=one_at_a_time)


def over_data(devices: Sequence[jax.Device] | None = None) -> Placement:
  return Placement(_mesh(devices, DATA), data_parallel=True)
