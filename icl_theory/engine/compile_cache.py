"""JAX's persistent compilation cache, on by default for the command lines and `train`/`run_sweep`.

A repeated command of the same shapes then loads its compiled programs from disk
instead of compiling them again. The cache lives in `$ICL_THEORY_CACHE_DIR`, by
default `$XDG_CACHE_HOME/icl_theory/jax` (`~/.cache/icl_theory/jax`); set
`ICL_THEORY_CACHE_DIR=off` to leave it off. A cache directory the user gave JAX
itself (`jax_compilation_cache_dir`) is kept as it is.

Turning the cache on changes JAX's configuration for the whole process, so it
happens when a run or sweep starts, never on import.
"""

from __future__ import annotations

import os

import jax

ENV = "ICL_THEORY_CACHE_DIR"
OFF = ("off", "0", "false", "none")
# Every program, however quick to compile (JAX's default keeps only those over 1 s): a run's dozens of
# small ones (its closed forms, key splits, the few ops it runs eagerly) cost 20-50 ms each to
# compile and a few ms to load. Keeping them all took the default run warm from 4.33 to 3.88 s
# (median of 7, A/B), for about 100 kB more on disk, and cost a cold run nothing measurable.
MIN_COMPILE_SECONDS = 0.0


def default_directory() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "icl_theory", "jax")


def enable() -> str | None:
  """Turns the cache on (once) where the environment allows; returns its directory, or None when off."""
  held = jax.config.jax_compilation_cache_dir
  if held:
    return held
  wanted = os.environ.get(ENV, "").strip()
  if wanted.lower() in OFF:
    return None
  directory = os.path.abspath(os.path.expanduser(wanted or default_directory()))
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return directory
