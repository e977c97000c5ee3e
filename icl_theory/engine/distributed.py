"""Several processes, one sweep: starting `jax.distributed`, splitting the work, meeting up.

A sweep on a cluster is one process per host (or per GPU), all started with
the same command. `initialize` connects them through JAX's own distributed
runtime: from explicit flags (`--coordinator_address`, `--num_processes`,
`--process_id`), or, when a launcher says it started several processes (SLURM's
srun, Open MPI's mpirun, a TPU pod on GKE), from what JAX reads off that
launcher. On CPU the processes talk over gloo.

The processes share nothing but the sweep's folder (a shared file system on a
cluster): `assign` hands each whole groups of runs, each process writes its
groups' files atomically, and process 0 assembles the table
(`icl_theory.engine.sweep.sweep`). `barrier` is the one collective, used only while
they agree on the plan, never around training, so no process holds a
collective open while another trains for hours.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import jax
from absl import logging

from icl_theory.engine.validation import ConfigError, check_int, fail

# Processes that finish their runs early wait this long at exit for the others
# (jax.distributed's shutdown barrier; its default of 5 minutes is shorter than a sweep).
SHUTDOWN_TIMEOUT_SECONDS = 7 * 24 * 3600
# What srun sets in each task, and what jax.distributed.initialize() needs to find its peers.
_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def launcher_processes() -> int:
  """How many processes a cluster launcher says it started (1 when none did)."""
  env = os.environ
  if all(name in env for name in _SLURM_STEP):  # inside an srun step, as JAX reads it
    return int(env["SLURM_NTASKS"])
  if "OMPI_COMM_WORLD_SIZE" in env:
    return int(env["OMPI_COMM_WORLD_SIZE"])
  if env.get("TPU_WORKER_HOSTNAMES"):
    return len(env["TPU_WORKER_HOSTNAMES"].split(","))
  return 1


def check_flags(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> bool:
  """Checks the three flags (all or none); True when they ask for more than one process."""
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if not any(given):
    return False
  if not all(given):
    raise ConfigError("coordinator_address, num_processes and process_id are not allowed alone: give all three "
                      f"(got coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                      f"process_id={process_id!r})")
  if not re.fullmatch(r"[\w.\-\[\]:]+:\d+", coordinator_address):
    raise fail("coordinator_address", coordinator_address, "HOST:PORT, e.g. 127.0.0.1:12345")
  count = check_int("num_processes", num_processes, 1)
  if check_int("process_id", process_id, 0) >= count:
    raise fail("process_id", process_id, f"an integer in [0, num_processes={count})")
  return count > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> bool:
  """Starts jax.distributed if the flags or a launcher ask for several processes; True if it did.

  `auto` starts it from the environment alone (what jax.distributed.initialize()
  detects: e.g. a Cloud TPU pod, which JAX recognises through its metadata server).
  Call before anything touches a JAX device.
  """
  explicit = check_flags(coordinator_address, num_processes, process_id)
  if not (explicit or auto or launcher_processes() > 1):
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_SECONDS)
  logging.info("jax.distributed: process %d of %d, %d local device(s) of %d", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def assign(costs: Sequence[float], num_processes: int) -> list[list[int]]:
  """Splits items of the given costs over processes: each item to the least loaded, costliest first.

  Deterministic (ties go to the lower index), so every process computes the same
  split; each process's items keep their original order.
  """
  load = [0.0] * num_processes
  shares: list[list[int]] = [[] for _ in range(num_processes)]
  for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
    p = min(range(num_processes), key=lambda p: (load[p], p))
    load[p] += costs[i]
    shares[p].append(i)
  return [sorted(share) for share in shares]
