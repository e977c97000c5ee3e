"""Distribution shift at test time: a trained LSA scored exactly on prompts from another distribution.

The risk of the predictor x_q^T Gamma g is an exact function of the test distribution (n, cov_x,
cov_w, sigma: `theory.gamma_risk`), and a one-layer LSA computes that predictor at any prompt length
(its 1/n is the test prompt's). So a layer trained on one distribution is scored exactly on another,
beside the test distribution's own optimum Gamma*_test (R*_test) and the Monte Carlo risk of the
network itself; deeper and nonlinear models get the Monte Carlo parts.

A run config's test fields, each None for "as in training":
  n_test          prompt length of the test prompts
  cov_x_test      covariate covariance (a spec string or array, as cov_x)
  cov_w_test      prior of the test tasks (as cov_w; 'inverse' is cov_x_test^-1)
  noise_std_test  response noise sigma
Every metric of a run (summary.json, a sweep's row) is on its test distribution; the sweep axes
`n_test_values`, `cov_x_test_values`, `cov_w_test_values`, `noise_std_test_values` evaluate a trained
run at each value without retraining. `evaluate_shift` does the same for a run in Python.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from icl_theory.engine import files, group
from icl_theory.engine.validation import ConfigError, check_float, check_int
from icl_theory.regression import evaluation, lsa, pool as pools, theory
from icl_theory.regression.covariance import resolve_covariance
from icl_theory.regression.task import RegressionTask

TEST_FIELDS = ("n_test", "cov_x_test", "cov_w_test", "noise_std_test")


def _fields(config: ml_collections.ConfigDict | dict | None) -> dict[str, Any]:
  """The test fields a config sets (None: as in training)."""
  if config is None:
    return {}
  return {name: config.get(name) for name in TEST_FIELDS if config.get(name) is not None}


def test_task(task: RegressionTask, config: ml_collections.ConfigDict | dict | None = None,
              **fields: Any) -> RegressionTask:
  """The training `task` with the test fields of `config` (or `fields`, which win) in place.

  A ConfigError names a test field that is not allowed.

  The covariances of the training task are matrices here: a covariate shift leaves the prior cov_w
  as trained (a training cov_w='inverse' stays the training cov_x^-1), unless cov_w_test is given.
  A task pool is kept (fresh-task metrics drop it: `pool.without_pool`).
  """
  fields = {**_fields(config), **{k: v for k, v in fields.items() if v is not None}}
  unknown = sorted(set(fields) - set(TEST_FIELDS))
  if unknown:
    raise ConfigError(f"{unknown[0]}={fields[unknown[0]]!r} is not allowed: the test fields are "
                      f"{', '.join(TEST_FIELDS)}")
  d = task.d
  n = check_int("n_test", fields.get("n_test", task.n), 1)
  noise = check_float("noise_std_test", fields.get("noise_std_test", float(task.noise_std)), minimum=0.0)
  cov_x = np.asarray(task.cov_x, np.float64)
  if "cov_x_test" in fields:
    cov_x = resolve_covariance(fields["cov_x_test"], d, "cov_x_test")
  cov_w = np.asarray(task.cov_w, np.float64)
  if "cov_w_test" in fields:
    cov_w = resolve_covariance(fields["cov_w_test"], d, "cov_w_test", cov_x=cov_x)
  return RegressionTask(d=d, n=n, cov_x=cov_x, cov_w=cov_w, noise_std=noise, response=task.response,
                        mlp_width=task.mlp_width, pool=task.pool)


def validate(config: ml_collections.ConfigDict, task: RegressionTask) -> None:
  """ConfigError naming the test field that is not allowed (run before anything compiles)."""
  if _fields(config):
    test_task(task, config)


def evaluation_tasks(tasks: RegressionTask, configs: Sequence[ml_collections.ConfigDict]) -> RegressionTask:
  """The R stacked tasks the metrics are computed on: each run's test task, fresh tasks from its prior (no pool).

  Runs without test fields or pools get their training tasks back unchanged.
  """
  if tasks.pool is None and not any(_fields(config) for config in configs):
    return tasks
  run = lambda r: jax.tree.map(lambda x: np.asarray(x)[r], tasks)
  return group.stack([pools.without_pool(test_task(run(r), config)) for r, config in enumerate(configs)])


def evaluate_shift(run: Any, task: RegressionTask | None = None, config: ml_collections.ConfigDict | None = None,
                   *, key: jax.Array | None = None, num_samples: int | None = None,
                   gamma_mc_samples: int | None = None, **fields: Any) -> dict[str, Any]:
  """A trained run scored on a test task: the exact risk of its Gamma_eff, R*_test, their gap, its Monte Carlo risk.

  `run`: a workdir (a single run's), a `LoadedRun`, or an LSA's parameters with their `config`.
  `task`: the test task; by default the run's task with `fields` (n_test=..., cov_x_test=...,
  cov_w_test=..., noise_std_test=...) in place (`test_task`). Tasks come from the prior: a pool is dropped.
  Returns, all on the test task: learned_risk_test (R_test(Gamma_eff): exact for linear responses,
  Monte Carlo otherwise; None for a deeper LSA), optimal_risk_test (R*_test), risk_gap_test
  (learned_risk_test - R*_test; for a deeper LSA the network's Monte Carlo risk - R*_test),
  model_risk_mc_test and its stderr (the network on `num_samples` prompts), gamma_rel_error_test
  (against Gamma*_test), train_optimal_risk_test (R_test of the training optimum Gamma*_train), the
  baselines (one_step_gd, preconditioned_gd, ridge, ols: `*_risk_test` and `*_risk_test_stderr`;
  one_step_gd_lr_test) and test_task
  (n, cov_x, cov_w, noise_std). `num_samples`, `gamma_mc_samples`: the run's eval_samples and
  gamma_mc_samples by default; `key`: the run's evaluation key.
  """
  if isinstance(run, str):
    from icl_theory import experiments  # the registry imports this package: import it when first used
    run = experiments.load_run(run)
  if hasattr(run, "params") and hasattr(run, "config"):
    params, config = run.params, run.config
  else:
    params = run
  if config is None:
    raise ConfigError("config=None is not allowed with parameters: pass the run's config (or its workdir)")
  from icl_theory.regression import experiment  # imports this module
  train_task = experiment.build_task(config)
  test = pools.without_pool(test_task(train_task, None, **fields) if task is None else task)
  params = params.get("params", params)
  lsa.check_params(params, test.d, "the run's params")
  key = group.eval_key(int(config.seed)) if key is None else key
  num_samples = int(num_samples or config.eval_samples)
  gamma_mc_samples = int(gamma_mc_samples or config.gamma_mc_samples)
  gamma_star = evaluation.reference_gamma(test, jax.random.split(key, 3)[1], gamma_mc_samples)
  compared = evaluation.compare(params, test, key, num_samples, gamma_star=gamma_star)
  baselines = evaluation.baseline_risks(test, key, num_samples, gamma_star=gamma_star,
                                        gamma_mc_samples=gamma_mc_samples)
  learned = compared["learned_risk"]
  out = {"learned_risk_test": learned, "learned_risk_test_stderr": compared["learned_risk_stderr"],
         "optimal_risk_test": compared["optimal_risk"], "optimal_risk_test_stderr": compared["optimal_risk_stderr"],
         "risk_gap_test": (learned if learned is not None else compared["model_risk_mc"]) - compared["optimal_risk"],
         "model_risk_mc_test": compared["model_risk_mc"], "model_risk_mc_test_stderr": compared["model_risk_mc_stderr"],
         "gamma_rel_error_test": compared["gamma_rel_error"], "effective_gamma": compared["effective_gamma"],
         "optimal_gamma_test": np.asarray(gamma_star).tolist()}
  train_gamma = evaluation.reference_gamma(pools.without_pool(train_task), jax.random.split(key, 3)[1],
                                           gamma_mc_samples)
  if test.is_gaussian:
    out["train_optimal_risk_test"] = float(theory.gamma_risk(train_gamma, test))
  else:
    out["train_optimal_risk_test"] = float(theory.gamma_risk_mc(train_gamma, test, jax.random.split(key, 3)[2],
                                                                num_samples).value)
  test_name = lambda name: name[:-len("_stderr")] + "_test_stderr" if name.endswith("_stderr") else name + "_test"
  out.update({test_name(name): value for name, value in baselines.items()})
  out["test_task"] = {"n": test.n, "cov_x": np.asarray(test.cov_x).tolist(), "cov_w": np.asarray(test.cov_w).tolist(),
                      "noise_std": float(test.noise_std)}
  return files.to_builtin(out)
