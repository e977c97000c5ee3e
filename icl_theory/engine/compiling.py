"""Compiling a lowered program, with XLA:CPU options where they were measured to pay.

XLA:CPU's fusion emitters generate the code of its fused loops by default. Without
them, some of the engine's programs compile in about 60% of the CPU time and run as
fast or faster (results/README.md, "Performance history", has the measurements):

- an evaluation's Monte Carlo programs, which run once (but the regression's `compare`
  at `n >= 32`, whose sampler-bound loop runs twice as fast with them:
  regression/evaluation.py);
- a sweep group's training chunk where each device loops over several runs
  (`sharding.Placement.one_at_a_time`): 0.9-1.2 instead of 1.5-2.0 CPU-seconds to
  compile, and steps as fast or up to 20% faster (the default sweep's groups: 12 runs
  of `d = 5`, 512 prompts a step, `n = 4 ... 64`).

A single run's step keeps the defaults: the job of the benchmark ran 7% slower a step
without the emitters, and the programs differ in float32 rounding, so a sweep of one
run would no longer give the run's own numbers.

While a sweep runs, every program compiled here generates its machine code on one
thread (`serial_codegen`): XLA:CPU splits a program's code into parts compiled on its
thread pool, which pays only where cores idle, and a sweep compiles beside the
training that keeps them busy.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import jax

FAST_CPU_COMPILE = {"xla_cpu_use_fusion_emitters": False}
# XLA:CPU's code generation in one piece, on the compiling thread (`serial_codegen`).
SERIAL_CODEGEN = {"xla_cpu_parallel_codegen_split_count": 1}

_open_scopes = 0  # how many `serial_codegen` scopes are open (the process's, every thread's calls)
_scopes_lock = threading.Lock()


def scoped_options() -> dict[str, object]:
  """The options an open `serial_codegen` scope adds to every `compile_lowered` call (none outside one)."""
  return dict(SERIAL_CODEGEN) if _open_scopes else {}


def compile_lowered(lowered: jax.stages.Lowered, devices: Sequence[jax.Device],
                    cpu_options: dict[str, object] | None = None) -> jax.stages.Compiled:
  """`lowered.compile()`, with `cpu_options` (and those of an open `serial_codegen` scope) when `devices` are CPUs.

  An XLA without one of the options compiles with its defaults.
  """
  options = {**scoped_options(), **(cpu_options or {})}
  if not options or any(device.platform != "cpu" for device in devices):
    return lowered.compile()
  try:
    return lowered.compile(compiler_options=options)
  except jax.errors.JaxRuntimeError as error:
    if "No such compile option" not in str(error):
      raise
    return lowered.compile()


@contextlib.contextmanager
def serial_codegen() -> Iterator[None]:
  """Within it, `compile_lowered` has XLA:CPU generate each program's code in one piece (SERIAL_CODEGEN).

  By default XLA splits a program's LLVM module into parts compiled on its thread
  pool: quicker where a core idles, but more work in all (the parts are optimised
  apart). A sweep compiles its next group while the current one trains on every core,
  so there the split only adds work: the default 60-run sweep, cold, took 26.4 against
  27.9 s (median of 4 alternating pairs; 47.9 against 50.9 CPU-s) with the same
  results.csv, to the bit. A single run, which compiles before it trains, gains
  nothing either way (cold, A/B 0.99-1.03), and keeps the default. Per program rather
  than in XLA_FLAGS: an XLA that lacks the option then compiles with its defaults
  instead of refusing to start. The scope is the process's (the compiling thread's
  calls count), and nests.
  """
  global _open_scopes
  with _scopes_lock:
    _open_scopes += 1
  try:
    yield
  finally:
    with _scopes_lock:
      _open_scopes -= 1
