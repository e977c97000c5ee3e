"""Exact U(0, 1) and N(0, 1) draws for the samplers, cheaper than `jax.random`'s on CPU.

`jax.random` under its default partitionable Threefry spends a whole Threefry
block on every 32-bit word, and for an array with small trailing axes (a batch
of (n + 1, d) prompts) its program is about 4x slower to compile and to run.
Here every block yields two words, over flat counters 0, 1, ...; the words
become floats exactly as in `jax.random.uniform` and `jax.random.normal` (23
random mantissa bits; the inverse error function), so the draws have the same
distribution, from a different stream of the same key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32


def _bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform uint32 words from `key`: Threefry-2x32 of the counters 0, 1, ..., two words a block."""
  size = int(np.prod(shape))
  raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return threefry_2x32(raw, jnp.arange(size + size % 2, dtype=jnp.uint32))[:size].reshape(shape)


def _one_to_two(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """U[1, 2) float32: 23 random mantissa bits under the exponent of 1, as jax.random does."""
  return jax.lax.bitcast_convert_type((_bits(key, shape) >> 9) | np.uint32(0x3F800000), jnp.float32)


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """U(0, 1) float32 from the top 23 bits of each word, as jax.random.uniform (0 excluded here)."""
  return jnp.maximum(_one_to_two(key, shape) - 1.0, jnp.finfo(jnp.float32).tiny)


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """N(0, 1) float32 by the inverse error function, as jax.random.normal."""
  u = jnp.maximum(np.nextafter(np.float32(-1.0), np.float32(0.0)), 2.0 * _one_to_two(key, shape) - 3.0)
  return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)
