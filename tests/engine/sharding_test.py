"""How a program's runs are mapped: a run axis of size 1 is squeezed, not vmapped, with the same values."""

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.engine import sharding


def _fn(x, tree):
  # Matrix products and a reduction: the operations a size-1 batch dimension slowed.
  y = tree["w"] @ x
  return {"sum": jnp.sum(y * tree["b"]), "y": y}


def test_vmap_runs_squeezes_a_single_run_and_vmaps_several():
  rng = np.random.default_rng(0)
  for runs in (1, 3):
    x = rng.normal(size=(runs, 4, 8)).astype(np.float32)
    tree = {"w": rng.normal(size=(runs, 5, 4)).astype(np.float32), "b": rng.normal(size=(runs, 5, 8)).astype(np.float32)}
    got = jax.jit(sharding.vmap_runs(_fn))(x, tree)
    want = jax.jit(jax.vmap(_fn))(x, tree)
    assert jax.tree.map(np.shape, got) == jax.tree.map(np.shape, want)  # the run axis is kept in the outputs
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)


def _dot_batch_dims(jaxpr) -> list:
  return [eqn.params["dimension_numbers"][1] for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general"]


def test_a_single_run_has_no_batch_dimension_in_its_products():
  w, x = jnp.ones((1, 5, 4)), jnp.ones((1, 4, 8))
  one = jax.make_jaxpr(sharding.vmap_runs(lambda w, x: w @ x))(w, x).jaxpr
  assert _dot_batch_dims(one) == [((), ())]           # a plain matrix product
  two = jax.make_jaxpr(sharding.vmap_runs(lambda w, x: w @ x))(jnp.ones((2, 5, 4)), jnp.ones((2, 4, 8))).jaxpr
  assert _dot_batch_dims(two) == [((0,), (0,))]       # several runs: vmap's batched product
