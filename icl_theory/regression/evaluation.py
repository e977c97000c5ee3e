"""Learned against analytic: what a trained LSA computes, beside what the theorem says it must.

`compare(params, task)` is the programmatic entry point; `baseline_risks(task)`
gives the risks of the closed-form predictors on the same task. Exact formulas
are used where the data are Gaussian (response 'linear'); otherwise everything
is Monte Carlo, with standard errors, on shared prompts so differences are paired.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.engine import compiling, precision
from icl_theory.regression import baselines, theory
from icl_theory.engine import sharding
from icl_theory.regression import lsa, multistep
from icl_theory.regression.task import Prompts, RegressionTask

DEFAULT_EVAL_SAMPLES = 100_000
DEFAULT_GAMMA_MC_SAMPLES = 1_000_000


def _mc(sums, count) -> tuple[jax.Array, jax.Array]:
  total, total_sq = sums
  est = theory.mean_and_stderr(total, total_sq, count)
  return est.value, est.stderr


def _reference_gamma(task: RegressionTask, key: jax.Array, num_samples: int) -> jax.Array:
  if task.is_gaussian:
    return theory.optimal_gamma(task)
  return theory.optimal_gamma_mc(task, key, num_samples).value


@precision.scoped
def reference_gamma(task: RegressionTask, key: jax.Array | None = None,
                    num_samples: int = DEFAULT_GAMMA_MC_SAMPLES) -> np.ndarray:
  """Gamma*: exact for linear responses, the Monte Carlo least-squares optimum otherwise."""
  key = jax.random.PRNGKey(1) if key is None else key
  return np.asarray(_reference_gamma(task, key, num_samples))


def _compare_arrays(params, task: RegressionTask, gamma_star: jax.Array, key: jax.Array,
                    num_samples: int) -> dict[str, jax.Array]:
  """compare() as a pure function of arrays: it jits, and vmaps over runs."""
  k_model, _, k_risk = jax.random.split(key, 3)

  def stats(prompts: Prompts):
    pred = lsa.predict(params, prompts)
    err2 = (pred - prompts.y_query) ** 2
    gap2 = (pred - theory.gamma_predict(gamma_star, prompts)) ** 2
    return (err2.sum(), (err2**2).sum()), (gap2.sum(), (gap2**2).sum())

  (err_sums, gap_sums), count = theory.mc_sums(k_model, task, num_samples, stats)
  out = {}
  out["model_risk_mc"], out["model_risk_mc_stderr"] = _mc(err_sums, count)
  out["prediction_gap_mse"], out["prediction_gap_mse_stderr"] = _mc(gap_sums, count)
  if task.is_gaussian:
    out["optimal_risk"], out["optimal_risk_stderr"] = theory.optimal_risk(task), jnp.zeros(())
  else:
    out["optimal_risk"], out["optimal_risk_stderr"] = theory.gamma_risk_mc(gamma_star, task, k_risk, num_samples)
  if lsa.num_layers(params) == 1:
    gamma = lsa.effective_gamma(params)
    norm = jnp.linalg.norm
    out["effective_gamma"] = gamma
    out["gamma_rel_error"] = norm(gamma - gamma_star) / norm(gamma_star)
    out["gamma_cosine"] = jnp.vdot(gamma, gamma_star) / (norm(gamma) * norm(gamma_star))
    if task.is_gaussian:
      out["learned_risk"], out["learned_risk_stderr"] = theory.gamma_risk(gamma, task), jnp.zeros(())
    else:  # same prompts as optimal_risk: the excess is a paired difference
      out["learned_risk"], out["learned_risk_stderr"] = theory.gamma_risk_mc(gamma, task, k_risk, num_samples)
    out["excess_risk"] = out["learned_risk"] - out["optimal_risk"]
    out.update(lsa.vanishing_parts(params))
  # A deeper LSA is held to L-step GD (`multistep`), not to the one-layer R*: its risk falls
  # below R*, and an "excess risk" over R* would be negative. It has no excess_risk.
  return out


_ONE_LAYER_ONLY = ("effective_gamma", "gamma_rel_error", "gamma_cosine", "learned_risk", "learned_risk_stderr",
                   "p_x_norm", "q21_norm", "p_x_rel", "q21_rel", "excess_risk")
# L > 1: L-step GD from w = 0 at its best constant step size, plain and preconditioned with cov_x^-1.
_DEEP_ONLY = ("multi_step_gd_lr", "multi_step_gd_risk", "multi_step_gd_risk_stderr",
              "multi_step_preconditioned_gd_lr", "multi_step_preconditioned_gd_risk",
              "multi_step_preconditioned_gd_risk_stderr", "risk_over_multi_step_gd")


def _to_python(out: dict[str, jax.Array]) -> dict[str, Any]:
  py = {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in out.items()}
  py = {**{k: None for k in _ONE_LAYER_ONLY + _DEEP_ONLY}, **py}
  if py["multi_step_gd_risk"] is not None and "model_risk_mc" in py:
    py["risk_over_multi_step_gd"] = py["model_risk_mc"] / py["multi_step_gd_risk"]
  return py


@precision.scoped
def compare(params: Any, task: RegressionTask, key: jax.Array | None = None,
            num_samples: int = DEFAULT_EVAL_SAMPLES, gamma_star: np.ndarray | None = None) -> dict[str, Any]:
  """Learned vs analytic for a trained LSA on `task`; a dict of floats (and None where undefined).

  Keys: gamma_rel_error (||Gamma_eff - Gamma*||_F / ||Gamma*||_F), gamma_cosine,
  learned_risk (R(Gamma_eff), exact for linear responses), model_risk_mc and
  model_risk_mc_stderr (the network itself on `num_samples` fresh prompts),
  optimal_risk, excess_risk, prediction_gap_mse (E[(network - Gamma* predictor)^2]),
  p_x_norm, q21_norm, p_x_rel, q21_rel, effective_gamma. Gamma fields are None
  for a deeper LSA. `gamma_star` defaults to `reference_gamma(task)`.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  params = params.get("params", params)
  lsa.check_params(params, task.d)
  if gamma_star is None:
    gamma_star = reference_gamma(task, jax.random.split(key, 3)[1])
  gamma_star = jnp.asarray(gamma_star, jnp.float32)
  out = jax.jit(_compare_arrays, static_argnames="num_samples")(params, task, gamma_star, key, num_samples)
  return _to_python(out)


def _ridge_predict(task: RegressionTask, prompts: Prompts) -> jax.Array:
  return baselines.ridge(prompts, task)


def _ols_predict(prompts: Prompts) -> jax.Array:
  return baselines.ols(prompts)


def _gd_predict(lr: jax.Array, prompts: Prompts) -> jax.Array:
  return baselines.one_step_gd(prompts, lr)


def determined_by_context(task: RegressionTask) -> bool:
  """Whether every context determines its w: noiseless linear data with n >= d (task values, not tracers).

  X then has full column rank almost surely, so the posterior is a point mass and
  ridge (the posterior mean) and OLS both predict exactly: their risks are 0, with
  no Monte Carlo needed (it costs most of a small run's evaluation).
  """
  return task.is_gaussian and task.n >= task.d and not np.any(np.asarray(task.noise_std))


def _baseline_arrays(task: RegressionTask, gamma_star: jax.Array, key: jax.Array, num_samples: int,
                     gamma_mc_samples: int, determined: bool = False) -> dict[str, jax.Array]:
  """baseline_risks() as a pure function of arrays: it jits, and vmaps over runs.

  `determined`: `determined_by_context(task)`, decided on the host (ridge and OLS risks are then 0).
  """
  k_eta, _, k_risk = jax.random.split(key, 3)
  mc = lambda predict: theory.prediction_risk_mc(k_risk, task, num_samples, predict)
  out = {}
  if task.is_gaussian:
    eta = theory.optimal_gd_lr(task)
    out["one_step_gd_risk"], out["one_step_gd_risk_stderr"] = theory.gamma_risk(eta * jnp.eye(task.d), task), 0.0
    out["preconditioned_gd_risk"], out["preconditioned_gd_risk_stderr"] = theory.optimal_risk(task), 0.0
    if determined:
      out["ridge_risk"], out["ridge_risk_stderr"] = 0.0, 0.0
    else:
      out["ridge_risk"], out["ridge_risk_stderr"] = theory.bayes_risk(task, k_risk, num_samples)
  else:
    eta = theory.optimal_gd_lr_mc(task, k_eta, gamma_mc_samples).value
    out["one_step_gd_risk"], out["one_step_gd_risk_stderr"] = mc(jax.tree_util.Partial(_gd_predict, eta))
    out["preconditioned_gd_risk"], out["preconditioned_gd_risk_stderr"] = mc(
        jax.tree_util.Partial(theory.gamma_predict, gamma_star))
    out["ridge_risk"], out["ridge_risk_stderr"] = mc(jax.tree_util.Partial(_ridge_predict, task))
  out["one_step_gd_lr"] = eta
  if determined:
    out["ols_risk"], out["ols_risk_stderr"] = 0.0, 0.0
  elif task.is_gaussian and task.n >= task.d + 2:
    out["ols_risk"], out["ols_risk_stderr"] = theory.ols_risk(task), 0.0
  else:
    out["ols_risk"], out["ols_risk_stderr"] = mc(jax.tree_util.Partial(_ols_predict))
  return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}


@precision.scoped
def baseline_risks(task: RegressionTask, key: jax.Array | None = None, num_samples: int = DEFAULT_EVAL_SAMPLES,
                   gamma_star: np.ndarray | None = None,
                   gamma_mc_samples: int = DEFAULT_GAMMA_MC_SAMPLES) -> dict[str, float]:
  """Risks of one-step GD (best eta), preconditioned GD (Gamma*), ridge/Bayes and OLS, with stderrs.

  Exact where a closed form exists (GD and preconditioned GD on linear data, OLS
  there too once n >= d + 2);
  ridge's risk is Monte Carlo over X only (exact given X) for linear data. For
  other responses eta_f and Gamma* are estimated from `gamma_mc_samples` prompts.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  if gamma_star is None:
    gamma_star = reference_gamma(task, jax.random.split(key, 3)[1], gamma_mc_samples)
  out = jax.jit(_baseline_arrays, static_argnames=("num_samples", "gamma_mc_samples", "determined"))(
      task, jnp.asarray(gamma_star, jnp.float32), key, num_samples, gamma_mc_samples, determined_by_context(task))
  return {k: float(v) for k, v in out.items()}


# Gamma* and the baselines are properties of the task, not of a trained run: one key
# for every run, so runs of the same task (seeds) share them and compute them once.
TASK_KEY_SEED = 20_231


def multi_step_reference(task: RegressionTask, num_layers: int, num_samples: int) -> dict[str, jax.Array]:
  """summary.json's L-step GD fields (`_DEEP_ONLY`) for an L-layer LSA; none for one layer."""
  if num_layers == 1:
    return {}
  key = jax.random.fold_in(jax.random.PRNGKey(TASK_KEY_SEED), num_layers)
  out = {}
  for name, precond in (("multi_step_gd", None), ("multi_step_preconditioned_gd", jnp.linalg.inv(task.cov_x))):
    found = multistep.search(task, key, num_layers, num_samples, precond)
    out[f"{name}_lr"], out[f"{name}_risk"], out[f"{name}_risk_stderr"] = found
  return out


def _task_reference(task: RegressionTask, num_samples: int, gamma_mc_samples: int,
                    num_layers: int = 1, determined: bool = False) -> dict[str, jax.Array]:
  key = jax.random.PRNGKey(TASK_KEY_SEED)
  gamma_star = _reference_gamma(task, jax.random.split(key, 3)[1], gamma_mc_samples)
  return {"optimal_gamma": gamma_star,
          **_baseline_arrays(task, gamma_star, key, num_samples, gamma_mc_samples, determined),
          **multi_step_reference(task, num_layers, num_samples)}


def _distinct(tasks: RegressionTask, num_runs: int) -> tuple[RegressionTask, np.ndarray]:
  """The distinct tasks among R stacked ones, and for each run the index of its task."""
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tasks)]
  position: dict[bytes, int] = {}  # a task's bytes -> its index among the distinct ones
  keep, index = [], []
  for r in range(num_runs):
    signature = b"".join(leaf[r].tobytes() for leaf in leaves)
    if signature not in position:
      position[signature] = len(keep)
      keep.append(r)
    index.append(position[signature])
  return jax.tree.map(lambda x: np.asarray(x)[keep], tasks), np.array(index)


# From this many context pairs, `compare`'s Monte Carlo loop over token prompts runs about twice as
# fast with XLA:CPU's fusion emitters (their sampler's code), which outweighs their 0.65 CPU-s more
# compilation (12 runs of 20k prompts, d = 5: 1.96 -> 0.85 CPU-s to run at n = 32, 3.55 -> 1.61 at
# n = 64; at n = 16, 1.24 -> 0.54, about what the compilation costs). Everything else compiles
# without them (`engine.compiling`).
_EMITTERS_MIN_CONTEXT = 32


def _compile_per_run(fn: Any, arg_shapes: tuple, devices: tuple[jax.Device, ...],
                     fast_compile: bool = True) -> jax.stages.Compiled:
  """`fn` (one run's arguments -> outputs) over the runs of `arg_shapes`, compiled for `devices`, one run at a time.

  These programs run once: `fast_compile` compiles them without XLA:CPU's fusion emitters.
  """
  lowered = jax.jit(sharding.per_run(fn, sharding.run_sharding(devices), one_at_a_time=True)).lower(
      *sharding.run_shapes(arg_shapes, devices))
  return compiling.compile_lowered(lowered, devices, compiling.FAST_CPU_COMPILE if fast_compile else None)


@dataclasses.dataclass(frozen=True)
class EvaluationPrograms:
  """`evaluate_group`'s compiled programs for R runs of given tasks; `compile_evaluation` makes them.

  Compiling touches no device, so a sweep compiles its next group's evaluation on
  another thread while the current group trains.
  """
  tasks: RegressionTask     # the R stacked tasks, host arrays
  distinct: RegressionTask  # the distinct ones among them ...
  index: np.ndarray         # ... and each run's index there
  devices: tuple[jax.Device, ...]
  reference: Any            # jax.stages.Compiled: distinct tasks -> Gamma* and the baselines
  compare: Any              # jax.stages.Compiled: (params, tasks, Gamma*s, keys) -> compare()


@precision.scoped
def compile_evaluation(param_shapes: Any, tasks: RegressionTask, num_samples: int = DEFAULT_EVAL_SAMPLES,
                       gamma_mc_samples: int = DEFAULT_GAMMA_MC_SAMPLES,
                       devices: Sequence[jax.Device] | None = None,
                       key_shapes: Any = None) -> EvaluationPrograms:
  """Compiles `evaluate_group` for parameters of `param_shapes` (leading run axis R) on `tasks`, running nothing.

  `tasks` must hold values, not only shapes: which runs share a task decides
  what the reference program computes. `key_shapes`: the runs' keys, by default
  R raw `jax.random.PRNGKey`s.
  """
  devices = tuple(devices or jax.local_devices())
  tasks = jax.device_get(tasks)
  num_runs = jax.tree.leaves(tasks)[0].shape[0]
  distinct, index = _distinct(tasks, num_runs)
  num_layers = lsa.num_layers(param_shapes)
  determined = determined_by_context(distinct)
  reference = _compile_per_run(lambda t: _task_reference(t, num_samples, gamma_mc_samples, num_layers, determined),
                               (distinct,), devices)
  gamma_shapes = jax.ShapeDtypeStruct((num_runs, tasks.d, tasks.d), jnp.float32)
  if key_shapes is None:
    key_shapes = jax.ShapeDtypeStruct((num_runs, 2), jnp.uint32)
  compare = _compile_per_run(lambda p, t, g, k: _compare_arrays(p, t, g, k, num_samples),
                             (param_shapes, tasks, gamma_shapes, key_shapes), devices,
                             fast_compile=tasks.n < _EMITTERS_MIN_CONTEXT)
  return EvaluationPrograms(tasks, distinct, index, devices, reference, compare)


@precision.scoped
def evaluate_group(params: Any, tasks: RegressionTask, keys: jax.Array, num_samples: int = DEFAULT_EVAL_SAMPLES,
                   gamma_mc_samples: int = DEFAULT_GAMMA_MC_SAMPLES,
                   devices: Sequence[jax.Device] | None = None,
                   programs: EvaluationPrograms | None = None) -> list[dict[str, Any]]:
  """Gamma*, compare() and baseline_risks() for R runs, sharded over `devices`.

  `params`, `tasks` and `keys` have a leading run axis of R. Gamma* and the
  baselines are computed once per distinct task, from a key of their own
  (`TASK_KEY_SEED`), so a run's numbers do not depend on which other runs share
  the group; `compare` uses the run's key. Returns one dict per run.
  `programs`: from `compile_evaluation` for the same parameter shapes, tasks,
  sample counts and devices (then `tasks` and `devices` here are not read);
  compiled here when not given.
  """
  if programs is None:
    shapes = lambda tree: jax.eval_shape(lambda x: x, tree)
    programs = compile_evaluation(shapes(params), tasks, num_samples, gamma_mc_samples, devices, shapes(keys))
  num_runs, index = len(keys), programs.index
  place = lambda tree: sharding.shard_runs(jax.device_get(tree), programs.devices)[0]
  reference = jax.device_get(programs.reference(place(programs.distinct)))
  gammas = reference["optimal_gamma"][index]
  out = jax.device_get(programs.compare(*place((params, programs.tasks, gammas, keys))))
  return [_to_python({**{k: v[index[r]] for k, v in reference.items()}, **{k: v[r] for k, v in out.items()}})
          for r in range(num_runs)]
