"""The samplers' random words and floats (icl_theory/engine/draws.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from icl_theory.engine import draws


def test_words_are_threefry_2x32_in_counter_mode():
  """Block i is Threefry-2x32(key, (i, 0)), two words, the 20-round function jax.random uses."""
  key = jax.random.PRNGKey(1234)
  words = np.asarray(draws._bits(key, (7, 3)))  # 21 words: an odd count takes half a block
  counters = jnp.concatenate([jnp.arange(11, dtype=jnp.uint32), jnp.zeros(11, jnp.uint32)])
  blocks = np.asarray(threefry_2x32(jax.random.key_data(key), counters)).reshape(2, 11)
  np.testing.assert_array_equal(words.reshape(-1), blocks.T.reshape(-1)[:21])


def test_floats_have_the_uniform_and_normal_moments():
  num = 400_000
  u = np.asarray(draws.uniform(jax.random.PRNGKey(0), (num,)), np.float64)
  positive = np.asarray(draws.uniform_positive(jax.random.PRNGKey(1), (num,)), np.float64)
  z = np.asarray(draws.normal(jax.random.PRNGKey(2), (num,)), np.float64)
  assert 0 < u.min() and u.max() < 1 and 0 < positive.min() and positive.max() <= 1
  se_uniform = np.sqrt(1 / 12 / num)
  assert abs(u.mean() - 0.5) < 4 * se_uniform and abs(positive.mean() - 0.5) < 4 * se_uniform
  # N(0, 1): mean 0 (se 1/sqrt(N)), variance 1 (se sqrt(2/N)), fourth moment 3 (se sqrt(96/N)).
  assert abs(z.mean()) < 4 / np.sqrt(num)
  assert abs(z.var() - 1) < 4 * np.sqrt(2 / num)
  assert abs((z**4).mean() - 3) < 4 * np.sqrt(96 / num)
  # Different keys, different words.
  assert not np.array_equal(draws._bits(jax.random.PRNGKey(0), (8,)), draws._bits(jax.random.PRNGKey(1), (8,)))


def test_vmapped_keys_draw_their_own_words():
  """A sweep vmaps its runs' keys: each must get the words it gets alone (JAX's own
  RngBitGenerator batching rule would give every run the first key's stream)."""
  keys = jax.random.split(jax.random.PRNGKey(5), 3)
  alone = np.stack([draws._bits(key, (2, 5)) for key in keys])
  np.testing.assert_array_equal(jax.jit(jax.vmap(lambda k: draws._bits(k, (2, 5))))(keys), alone)
  np.testing.assert_array_equal(jax.vmap(lambda k: draws._bits(k, (2, 5)))(keys[:1]), alone[:1])  # one run
  nested = jax.vmap(jax.vmap(lambda k: draws._bits(k, (2, 5))))(jnp.stack([keys, keys[::-1]]))
  np.testing.assert_array_equal(nested[1], alone[::-1])
