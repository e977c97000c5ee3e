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

A sweep also generates each program's machine code on one thread (`serial_cpu_codegen`):
XLA:CPU splits a program's code into parts compiled on its thread pool, which pays only
where cores idle, and a sweep compiles beside the training that keeps them busy.
"""

from __future__ import annotations

from typing import Sequence

import os

import jax

FAST_CPU_COMPILE = {"xla_cpu_use_fusion_emitters": False}


def compile_lowered(lowered: jax.stages.Lowered, devices: Sequence[jax.Device],
                    cpu_options: dict[str, object] | None = None) -> jax.stages.Compiled:
  """`lowered.compile()`, with `cpu_options` when `devices` are CPUs (an XLA without an option: its defaults)."""
  if not cpu_options or any(device.platform != "cpu" for device in devices):
    return lowered.compile()
  try:
    return lowered.compile(compiler_options=cpu_options)
  except jax.errors.JaxRuntimeError as error:
    if "No such compile option" not in str(error):
      raise
    return lowered.compile()


_CODEGEN_SPLIT_FLAG = "--xla_cpu_parallel_codegen_split_count"


def serial_cpu_codegen() -> bool:
  """Asks XLA:CPU to generate each program's code in one piece, on the compiling thread; call before JAX starts.

  By default XLA splits a program's LLVM module into parts compiled on its thread
  pool: quicker where a core idles, but more work in all (the parts are optimised
  apart). A sweep compiles its next group while the current one trains on every core,
  so there the split only adds work: the default 60-run sweep, cold, took 26.4 against
  27.9 s (median of 4 alternating pairs; 47.9 against 50.9 CPU-s) with the same
  results.csv, to the bit. A single run, which compiles before it trains, gains
  nothing either way (cold, A/B 0.99-1.03). Returns False, changing nothing, where
  XLA_FLAGS already sets the split.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if _CODEGEN_SPLIT_FLAG in flags:
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {_CODEGEN_SPLIT_FLAG}=1".strip()
  return True
