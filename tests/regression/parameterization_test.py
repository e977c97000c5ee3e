"""The LSA's parameterisations: masked entries stay exactly 0 and get no gradient; bad combinations are refused."""

import jax
import numpy as np
import pytest

import icl_theory
from icl_theory.configs import lsa as lsa_config
from icl_theory.engine import trainer
from icl_theory.regression import experiment as lsa_regression
from icl_theory.regression import parameterization


def _config(**fields):
  config = lsa_config.get_config()
  config.update(d=2, n=4, batch_size=64, steps=10, warmup_steps=2, log_every=10, checkpoint_every=0)
  config.update(**fields)
  return config


def test_sparse_masks_keep_the_x_x_blocks_and_p_y():
  m = parameterization.masks("sparse", 3)
  np.testing.assert_array_equal(m["W_KQ"], np.pad(np.ones((3, 3)), ((0, 1), (0, 1))))
  np.testing.assert_array_equal(m["W_PV"], np.pad(np.ones((3, 3)), ((0, 1), (0, 1))) + np.diag([0, 0, 0, 1.0]))
  # y_to_x adds the 2d + 1 entries through which y enters the scores and the x-values.
  assert parameterization.num_trainable("y_to_x", 3) - parameterization.num_trainable("sparse", 3) == 2 * 3 + 1
  assert parameterization.num_trainable("full", 3) == 2 * 16
  assert parameterization.num_trainable("sparse_gd", 3) == 3 * 3 + 1  # Q and p_y


# The einsum path (the fused one-layer path is held to it, gradient included, below).
@pytest.mark.slow  # 6 s with a cold compile cache (each case trains); the init and fused-path tests stay fast
@pytest.mark.parametrize("name, num_layers", [("sparse", 2), ("y_to_x", 1)])
def test_masked_entries_get_no_gradient_and_stay_zero_under_training(name, num_layers):
  config = _config(parameterization=name, num_layers=num_layers)
  task = lsa_regression.validate_config(config)
  objective = lsa_regression.make_objective(task, config, fused=False)
  params = objective.init(jax.random.PRNGKey(0))
  grads = jax.grad(objective.loss)(params, jax.random.PRNGKey(1), task)
  optimizer, schedule = trainer.optimizer_from_config(config)
  trained = trainer.fit(objective, optimizer, schedule, trainer.LoopSettings.from_config(config), 0, task).state.params
  assert float(trained["readout"]) == -1.0  # Ahn et al.'s readout, untouched by training
  for layer in (k for k in params if k.startswith("layer_")):
    for weight, mask in parameterization.masks(name, task.d).items():
      off = mask == 0
      assert np.all(np.asarray(params[layer][weight])[off] == 0)
      assert np.all(np.asarray(grads[layer][weight])[off] == 0)
      assert np.all(np.asarray(trained[layer][weight])[off] == 0)
      assert np.all(np.asarray(trained[layer][weight])[~off] != np.asarray(params[layer][weight])[~off])


def test_the_full_parameterisation_is_the_default_and_unmasked():
  config = _config(num_layers=2)
  assert config.parameterization == "full"
  task = lsa_regression.validate_config(config)
  params = lsa_regression.make_objective(task, config).init(jax.random.PRNGKey(0))
  assert parameterization.apply(params, "full") is params and "readout" not in params
  # Every entry but p_x and q21 (the last row's first d, drawn at vanishing_init_scale = 0) starts nonzero.
  assert all(np.all(np.asarray(w)[:-1] != 0) for layer in params.values() for w in layer.values())


@pytest.mark.parametrize("fields, message", [
    (dict(parameterization="dense"),
     r"parameterization='dense' is not allowed.*'full', 'sparse', 'y_to_x', 'sparse_gd'"),
    (dict(parameterization="sparse", freeze_vanishing_parts=True),
     r"freeze_vanishing_parts=True is not allowed with parameterization='sparse'"),
    (dict(parameterization="y_to_x", vanishing_init_scale=0.01),
     r"vanishing_init_scale=0.01 is not allowed with parameterization='y_to_x'"),
])
def test_bad_combinations_are_config_errors(fields, message):
  with pytest.raises(icl_theory.ConfigError, match=message):
    lsa_regression.validate_config(_config(**fields))


@pytest.mark.slow  # 6 s with a cold compile cache; lsa_fused_test holds the fused path in the fast set
def test_sparse_one_layer_fused_and_einsum_paths_agree():
  config = _config(parameterization="sparse")
  task = lsa_regression.validate_config(config)
  fused = lsa_regression.make_objective(task, config, fused=True)
  plain = lsa_regression.make_objective(task, config, fused=False)
  params = fused.init(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(3)
  loss_f, grad_f = jax.value_and_grad(fused.loss)(params, key, task)
  loss_p, grad_p = jax.value_and_grad(plain.loss)(params, key, task)
  np.testing.assert_allclose(loss_f, loss_p, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_f, grad_p)


@pytest.mark.parametrize("name, p_y_init, expected", [
    ("sparse", None, 1.0), ("sparse_gd", None, 1.0), ("y_to_x", None, 1.0),  # Ahn et al.'s fixed p, as a start
    ("sparse", -0.5, -0.5), ("full", 0.25, 0.25),
    ("full", None, None),  # the one-layer theorem's runs: a N(0, init_scale^2) draw, different in every layer
])
def test_p_y_starts_at_ahn_et_al_s_one_in_the_sparse_layers(name, p_y_init, expected):
  config = _config(parameterization=name, num_layers=3, p_y_init=p_y_init)
  task = lsa_regression.validate_config(config)
  params = lsa_regression.make_objective(task, config).init(jax.random.PRNGKey(0))
  p_y = [float(params[f"layer_{i}"]["W_PV"][-1, -1]) for i in range(3)]
  if expected is None:
    assert len(set(p_y)) == 3 and all(0 < abs(p) < 5 * config.init_scale for p in p_y)
  else:
    assert p_y == [expected] * 3
  # The rest of W_PV (B, held at 0 in sparse_gd) is still drawn at init_scale.
  b = np.abs(np.asarray(params["layer_0"]["W_PV"])[:task.d, :task.d])
  assert (b.max() == 0) if name == "sparse_gd" else (0 < b.max() < 5 * config.init_scale)


def test_p_y_init_must_be_a_finite_number():
  with pytest.raises(icl_theory.ConfigError, match=r"^p_y_init=inf is not allowed: a finite number$"):
    lsa_regression.validate_config(_config(p_y_init=float("inf")))
