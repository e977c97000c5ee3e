"""Test-time shift: a layer's exact risk on another distribution, against the network's Monte Carlo risk there."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl_theory
from icl_theory.configs import lsa as lsa_config
from icl_theory.configs import sweep as sweep_config
from icl_theory.regression import experiment as lsa_regression
from icl_theory.regression import shift, theory

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ROTATED_RESCALED = "diag:0.5,1,2@3"  # d = 3: spectrum rescaled (trace 3.5, not 3), eigenvectors rotated


def _config(**fields):
  config = lsa_config.get_config()
  config.update(d=3, n=10, noise_std=0.5, steps=2000, log_every=500, checkpoint_every=0, eval_samples=50_000,
                gamma_mc_samples=100_000)
  config.update(**fields)
  return config


def _layer_with_gamma(gamma: np.ndarray) -> dict:
  """A one-layer LSA with p_x = q21 = 0 whose prediction is x_q^T Gamma g: p_y = 1, Q11 = Gamma^T."""
  d = gamma.shape[0]
  w_pv = np.zeros((d + 1, d + 1), np.float32)
  w_pv[-1, -1] = 1.0
  w_kq = np.zeros((d + 1, d + 1), np.float32)
  w_kq[:d, :d] = gamma.T
  return {"layer_0": {"W_PV": jnp.asarray(w_pv), "W_KQ": jnp.asarray(w_kq)}}


def _z(out):
  return abs(out["learned_risk_test"] - out["model_risk_mc_test"]) / out["model_risk_mc_test_stderr"]


def test_test_task_takes_the_test_fields():
  task = lsa_regression.build_task(_config())
  test = shift.test_task(task, n_test=40, cov_x_test=_ROTATED_RESCALED, noise_std_test=0.1)
  assert test.n == 40 and np.isclose(test.noise_std, 0.1)
  assert np.isclose(np.trace(test.cov_x), 3.5) and abs(test.cov_x[0, 1]) > 1e-3  # rescaled and rotated
  np.testing.assert_array_equal(test.cov_w, task.cov_w)  # the prior stays as trained
  inverse = shift.test_task(task, cov_x_test=_ROTATED_RESCALED, cov_w_test="inverse")
  np.testing.assert_allclose(inverse.cov_w @ inverse.cov_x, np.eye(3), atol=1e-5)
  assert shift.test_task(task).n == task.n


@pytest.mark.parametrize("field, value", [("n_test", 0), ("cov_x_test", "geometric:0.5"), ("noise_std_test", -1.0),
                                          ("cov_w_test", "wishart")])
def test_bad_test_field_names_itself(field, value):
  with pytest.raises(icl_theory.ConfigError, match=f"^{field}="):
    lsa_regression.validate_config(_config(**{field: value}))


@pytest.mark.slow
def test_exact_shifted_risk_matches_the_network_by_monte_carlo():
  # Any Gamma (here a non-symmetric one), put in an LSA: its exact risk at a shifted test distribution
  # against the network's own Monte Carlo risk there.
  gamma = np.array([[0.7, 0.1, 0.0], [-0.2, 0.5, 0.1], [0.05, 0.0, 0.9]], np.float32)
  out = shift.evaluate_shift(_layer_with_gamma(gamma), config=_config(), num_samples=40_000,
                             n_test=40, cov_x_test=_ROTATED_RESCALED)
  test = shift.test_task(lsa_regression.build_task(_config()), n_test=40, cov_x_test=_ROTATED_RESCALED)
  assert np.isclose(out["learned_risk_test"], float(theory.gamma_risk(jnp.asarray(gamma), test)), rtol=1e-5)
  assert np.isclose(out["optimal_risk_test"], float(theory.optimal_risk(test)), rtol=1e-5)
  assert out["risk_gap_test"] > 0 and _z(out) < 4


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("shift_run"))
  icl_theory.train(_config(), workdir, verbose=False)
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("fields", [dict(n_test=40), dict(cov_x_test=_ROTATED_RESCALED),
                                    dict(n_test=40, cov_x_test=_ROTATED_RESCALED)])
def test_trained_layer_scored_on_a_shifted_distribution(trained_run, fields):
  out = shift.evaluate_shift(trained_run, **fields)
  assert _z(out) < 4
  # A layer trained at n = 10 is not the test optimum: a positive gap, which it shares with Gamma*_train.
  assert out["risk_gap_test"] > 0
  assert abs(out["learned_risk_test"] - out["train_optimal_risk_test"]) < 0.05 * out["train_optimal_risk_test"]


@pytest.mark.slow
def test_command_line_scores_a_trained_run(trained_run):
  command = [sys.executable, "-m", "icl_theory.shift", f"--workdir={trained_run}", "--n_test=40",
             f"--cov_x_test={_ROTATED_RESCALED}", "--json"]
  done = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _ROOT},
                        timeout=300)
  assert done.returncode == 0, done.stderr
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["test_task"]["n"] == 40 and _z(out) < 4
  bad = subprocess.run(command[:4] + ["--n_test=0"], cwd=_ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": _ROOT}, timeout=300)
  assert bad.returncode == 2 and "n_test=0 is not allowed" in bad.stderr


@pytest.mark.slow
def test_sweep_evaluation_axes_score_without_retraining(tmp_path):
  config = sweep_config.get_config()
  config.base.update(d=3, n=10, noise_std=0.5, steps=300, log_every=100, checkpoint_every=100, eval_samples=20_000,
                     gamma_mc_samples=50_000)
  config.n_values, config.cov_x_values, config.noise_std_values, config.num_seeds = (10,), ("identity",), (0.5,), 1
  config.n_test_values = (10, 40)
  config.cov_x_test_values = ("identity", _ROTATED_RESCALED)
  rows = icl_theory.run_sweep(config, str(tmp_path), verbose=False)
  assert len(rows) == 4 and len({json.dumps(r["effective_gamma"]) for r in rows}) == 1  # one trained layer
  task = lsa_regression.build_task(config.base)
  for row in rows:
    test = shift.test_task(task, n_test=row["n_test"], cov_x_test=row["cov_x_test"])
    gamma = jnp.asarray(row["effective_gamma"])
    assert np.isclose(row["learned_risk"], float(theory.gamma_risk(gamma, test)), rtol=1e-5)
    assert np.isclose(row["optimal_risk"], float(theory.optimal_risk(test)), rtol=1e-5)
    assert abs(row["learned_risk"] - row["model_risk_mc"]) < 4 * row["model_risk_mc_stderr"]


@pytest.mark.slow
def test_deeper_and_nonlinear_models_get_the_monte_carlo_parts():
  # Two layers: no Gamma_eff, so the gap is the network's Monte Carlo risk over R*_test.
  config = _config(num_layers=2, eval_samples=4000)
  params = lsa_regression.make_objective(lsa_regression.build_task(config), config).init(jax.random.PRNGKey(0))
  out = shift.evaluate_shift(params, config=config, n_test=20)
  assert out["learned_risk_test"] is None and out["effective_gamma"] is None
  assert np.isclose(out["risk_gap_test"], out["model_risk_mc_test"] - out["optimal_risk_test"], rtol=1e-6)
  # ReLU responses: Gamma_eff's risk is itself Monte Carlo, on other prompts than the network's; both estimate
  # the same number (the layer computes x_q^T Gamma g exactly).
  relu = _config(response="relu", eval_samples=20_000, gamma_mc_samples=20_000)
  out = shift.evaluate_shift(_layer_with_gamma(0.4 * np.eye(3, dtype=np.float32)), config=relu, n_test=20)
  both = np.hypot(out["learned_risk_test_stderr"], out["model_risk_mc_test_stderr"])
  assert out["learned_risk_test_stderr"] > 0 and abs(out["learned_risk_test"] - out["model_risk_mc_test"]) < 4 * both
