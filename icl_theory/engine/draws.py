"""Exact U(0, 1) and N(0, 1) draws for the samplers, cheaper than `jax.random`'s on CPU.

`jax.random` under its default partitionable Threefry spends a whole Threefry
block on every 32-bit word, and for an array with small trailing axes (a batch
of (n + 1, d) prompts) its program is several times slower to compile and to run.
Here the words are Threefry-2x32 (20 rounds, as `jax.random`) in counter mode,
block i = Threefry(key, (i, 0)) giving two words, computed by XLA's
RngBitGenerator (faster on CPU than the same blocks from `threefry_2x32`;
the test checks the two agree). The words become floats
exactly as in `jax.random.uniform` and `jax.random.normal` (23 random mantissa
bits; the inverse error function), so the draws have the same distribution,
from a different stream of the same key.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _rng_bits(key_data: jax.Array, size: int) -> jax.Array:
  """`size` words of Threefry-2x32 in counter mode, by XLA's RngBitGenerator (unbatched key data)."""
  state = jnp.concatenate([key_data.astype(jnp.uint32), jnp.zeros(2, jnp.uint32)])
  return jax.lax.rng_bit_generator(state, (size,), jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)[1]


@functools.lru_cache(maxsize=None)
def _words(size: int) -> Callable[[jax.Array], jax.Array]:
  """Key data -> `size` words, with a batching rule that keeps each key's own stream.

  JAX's own rule for a batched RngBitGenerator draws every batch entry from the first
  key's state; here the keys of a vmapped batch (a sweep's runs) each draw their own
  words, one key after another, exactly as they would unbatched (cheaper than
  `threefry_2x32` vectorised over the keys).
  """
  @jax.custom_batching.custom_vmap
  def words(key_data):
    return _rng_bits(key_data, size)

  @words.def_vmap
  def _(axis_size, in_batched, key_data):
    if not in_batched[0]:
      return words(key_data), False
    if axis_size == 1:  # a single run under the trainer's run axis: the fast path
      return words(key_data[0])[None], True
    return jax.lax.map(words, key_data), True

  return words


def _bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform uint32 words from `key`: Threefry-2x32 of the counters (0, 0), (1, 0), ..., two words a block."""
  raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return _words(int(np.prod(shape)))(raw).reshape(shape)


def _one_to_two(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """U[1, 2) float32: 23 random mantissa bits under the exponent of 1, as jax.random does."""
  return jax.lax.bitcast_convert_type((_bits(key, shape) >> 9) | np.uint32(0x3F800000), jnp.float32)


def uniform_positive(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """U(0, 1] float32 (23 random bits): 1 - U[0, 1), whose products of up to 5 stay above float32's smallest normal."""
  return 2.0 - _one_to_two(key, shape)


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """U(0, 1) float32 from the top 23 bits of each word, as jax.random.uniform (0 excluded here)."""
  return jnp.maximum(_one_to_two(key, shape) - 1.0, jnp.finfo(jnp.float32).tiny)


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """N(0, 1) float32 by the inverse error function, as jax.random.normal."""
  u = jnp.maximum(np.nextafter(np.float32(-1.0), np.float32(0.0)), 2.0 * _one_to_two(key, shape) - 3.0)
  return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)
