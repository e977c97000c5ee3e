"""Deep LSAs: sparse layers with B = 0 are preconditioned GD exactly; trained ones beat L-step GD."""

import jax
import numpy as np
import pytest

import icl_theory
from icl_theory.configs import lsa as lsa_config
from icl_theory.regression import depth, lsa, parameterization
from icl_theory.regression.task import RegressionTask, sample_prompts


def _sparse_params(num_layers, d, key, with_b=False):
  model = lsa.LSA(num_layers=num_layers, init_scale=0.3, negate_readout=True)
  task = RegressionTask(d=d, n=7)
  prompts = sample_prompts(key, task, 4)
  params = parameterization.apply(model.init(key, prompts.x, prompts.y, prompts.x_query)["params"], "sparse")
  if not with_b:
    params = {k: ({**v, "W_PV": v["W_PV"].at[:d, :d].set(0.0)} if k.startswith("layer_") else v)
              for k, v in params.items()}
  return params, task


@pytest.mark.slow  # 7-10 s: both depths compile their own programs
@pytest.mark.parametrize("num_layers", [1, 3])
def test_sparse_layers_without_b_are_gd_with_their_own_preconditioners(num_layers):
  params, task = _sparse_params(num_layers, 3, jax.random.PRNGKey(num_layers))
  prompts = sample_prompts(jax.random.PRNGKey(9), task, 256)
  gd = depth.gd_with_preconditioners(prompts, depth.preconditioners(params))
  np.testing.assert_allclose(lsa.predict(params, prompts), gd, rtol=2e-4, atol=2e-5)


@pytest.mark.slow  # 3 s with a cold compile cache
def test_one_layer_preconditioner_is_the_effective_gamma():
  params, _ = _sparse_params(1, 3, jax.random.PRNGKey(0))
  np.testing.assert_allclose(depth.preconditioners(params)[0], lsa.effective_gamma(params), rtol=1e-6)


@pytest.mark.slow  # 3 s with a cold compile cache
def test_with_b_the_layers_leave_gd_and_the_prediction_says_so():
  params, task = _sparse_params(2, 3, jax.random.PRNGKey(2), with_b=True)
  prompts = sample_prompts(jax.random.PRNGKey(9), task, 256)
  gap = np.mean((np.asarray(lsa.predict(params, prompts))
                 - np.asarray(depth.gd_with_preconditioners(prompts, depth.preconditioners(params)))) ** 2)
  assert gap > 1e-6


@pytest.mark.slow  # 2.4 s cold
def test_layer_preconditioners_recover_a_multiple_of_the_inverse_covariance():
  params, _ = _sparse_params(1, 3, jax.random.PRNGKey(0))
  cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.5]])
  q = -0.7 * np.linalg.inv(cov).T / float(params["layer_0"]["W_PV"][-1, -1]) / float(lsa.readout_sign(params))
  params = {**params, "layer_0": {**params["layer_0"], "W_KQ": params["layer_0"]["W_KQ"].at[:3, :3].set(q)}}
  (row,) = depth.layer_preconditioners(params, cov)
  assert row["gamma_over_inverse_cov"] == pytest.approx(-0.7, rel=1e-5)
  assert row["gamma_residual_from_inverse_cov"] < 1e-5 < row["gamma_residual_from_identity"]


@pytest.mark.slow
def test_trained_sparse_two_layers_beat_two_steps_of_gd(tmp_path):
  config = lsa_config.get_config()
  config.update(num_layers=2, parameterization="sparse", noise_std=0.0, steps=600, batch_size=512, log_every=300,
                checkpoint_every=0, eval_samples=20_000, gamma_mc_samples=100_000)
  summary = icl_theory.train(config, str(tmp_path), verbose=False).summary
  assert summary["excess_risk"] is None and summary["effective_gamma"] is None
  assert summary["multi_step_gd_lr"] > 0 and summary["multi_step_preconditioned_gd_risk"] > 0
  assert summary["risk_over_multi_step_gd"] == pytest.approx(summary["model_risk_mc"] / summary["multi_step_gd_risk"])
  assert (tmp_path / "lsa.png").exists()
  gd, model = summary["multi_step_gd_risk"], summary["model_risk_mc"]
  # Ahn et al.: two trained layers are at least as good as two GD steps at their best step size.
  assert model + 4 * summary["model_risk_mc_stderr"] < gd - 4 * summary["multi_step_gd_risk_stderr"]
