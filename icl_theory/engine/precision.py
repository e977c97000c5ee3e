"""Float32 matrix products at full float32 precision, for the library's own computations only.

GPUs otherwise take TF32 (a 10-bit mantissa) for float32 dots, and the closed
forms then disagree with their implementations far beyond the tolerances the
tests hold them to. The precision is set in a scope around the library's
compilations and calls, never in JAX's global config: a user's other JAX code
keeps whatever precision it chose.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import jax

F = TypeVar("F", bound=Callable)

MATMUL_PRECISION = "float32"


def context():
  """The scope: `with precision.context(): ...` traces, compiles and runs at full float32 precision."""
  return jax.default_matmul_precision(MATMUL_PRECISION)


def scoped(fn: F) -> F:
  """`fn`, run inside `context()` (jit caches key on the precision, so scoped and unscoped never mix)."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with context():
      return fn(*args, **kwargs)
  return wrapper  # type: ignore[return-value]
