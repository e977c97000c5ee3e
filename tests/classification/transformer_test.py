"""The GPT-2-style transformer: shapes, the query's attention, invariance to context order, and its fields."""

import chex
import jax
import numpy as np
import pytest

import icl_theory
from icl_theory.classification.transformer import Transformer, attention_mask

_B, _L, _D = 3, 7, 12
_SMALL = dict(num_layers=2, num_heads=2, width=16, mlp_ratio=2)


def _inputs(seed: int = 0):
  k_context, k_query = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k_context, (_B, _L, _D)), jax.random.normal(k_query, (_B, _D))


@pytest.fixture(scope="module")
def model_and_params():
  model = Transformer(**_SMALL)
  return model, model.init(jax.random.PRNGKey(1), *_inputs())


# Jitted, the GPT compiles for 4.5 s cold: the fast set runs it eagerly (run_test's slow GPT run trains it jitted).
@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_shapes_and_attention_is_a_distribution_over_the_contexts(jit):
  model = Transformer(**_SMALL)
  context, query = _inputs()
  params = model.init(jax.random.PRNGKey(1), context, query)
  apply = lambda p, c, q: model.apply(p, c, q, mutable=["intermediates"])
  (output, attention), state = (jax.jit(apply) if jit else apply)(params, context, query)
  chex.assert_shape(output, (_B,))
  chex.assert_shape(attention, (_B, _L))
  chex.assert_tree_all_finite((output, attention))
  np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
  # Every layer's per-head query attention is kept; the returned one is the last layer's head mean.
  layers = state["intermediates"]
  assert sorted(layers) == ["attention_layer0", "attention_layer1"]
  last, = layers["attention_layer1"]
  chex.assert_shape(last, (_B, _SMALL["num_heads"], _L))
  np.testing.assert_allclose(last.mean(1), attention, rtol=1e-6)


def test_the_mask_lets_no_token_attend_to_the_query():
  mask = np.asarray(attention_mask(3))
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0]] * 4)


def test_the_contexts_representations_do_not_depend_on_the_query(model_and_params):
  model, params = model_and_params
  context, query = _inputs()
  apply = lambda q: model.apply(params, context, q, capture_intermediates=True, mutable=["intermediates"])[1]
  states, states_other = apply(query), apply(query + 3.0)
  for layer in range(_SMALL["num_layers"]):
    h, _ = states["intermediates"][f"block{layer}"]["__call__"][0]
    h_other, _ = states_other["intermediates"][f"block{layer}"]["__call__"][0]
    chex.assert_shape(h, (_B, _L + 1, _SMALL["width"]))
    np.testing.assert_array_equal(h[:, :-1], h_other[:, :-1])  # the contexts: untouched by the query
    assert np.abs(np.asarray(h[:, -1] - h_other[:, -1])).max() > 1e-3  # the query's own token: changed


def test_output_is_invariant_to_the_order_of_the_contexts(model_and_params):
  model, params = model_and_params
  context, query = _inputs()
  output, attention = model.apply(params, context, query)
  order = np.random.default_rng(0).permutation(_L)
  output_permuted, attention_permuted = model.apply(params, context[:, order], query)
  np.testing.assert_allclose(output_permuted, output, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attention_permuted, attention[:, order], rtol=1e-5, atol=1e-7)


def test_the_readout_depends_on_the_query(model_and_params):
  model, params = model_and_params
  context, query = _inputs()
  output, _ = model.apply(params, context, query)
  output_other, _ = model.apply(params, context, -query)
  assert np.abs(np.asarray(output - output_other)).min() > 1e-4


def test_the_readout_depends_on_the_contexts(model_and_params):
  model, params = model_and_params
  context, query = _inputs()
  output, _ = model.apply(params, context, query)
  output_other, _ = model.apply(params, context.at[:, :, -1].multiply(-1.0), query)
  assert np.abs(np.asarray(output - output_other)).min() > 1e-5


def test_no_positional_parameters():
  model = Transformer(**_SMALL)
  params = model.init(jax.random.PRNGKey(0), *_inputs())["params"]
  names = {"/".join(str(getattr(k, "key", k)) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert not any("pos" in name for name in names)
  assert {"embed/kernel", "readout/kernel", "ln_final/scale", "block0/qkv/kernel", "block1/mlp_out/kernel"} <= names
  chex.assert_shape(params["block0"]["mlp_in"]["kernel"], (16, 32))  # mlp_ratio * width


@pytest.mark.parametrize("field, value, allowed", [
    ("num_layers", 0, "an integer >= 1"),
    ("num_heads", 0, "an integer >= 1"),
    ("width", 15, "a positive multiple of num_heads=2"),
    ("width", 0, "an integer >= 1"),
    ("mlp_ratio", 1.5, "an integer >= 1"),
])
def test_a_bad_field_names_itself(field, value, allowed):
  with pytest.raises(icl_theory.ConfigError, match=f"^{field}={value!r} is not allowed: {allowed}"):
    Transformer(**{**_SMALL, field: value})
