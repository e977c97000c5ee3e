r"""Task diversity (Raventos et al. 2023) for one LSA layer: fresh-task risk against the pool size M.

    python3 scripts/diversity.py [--out=results/diversity] [--workdir=DIR]

At d = 8, n = 16, sigma^2 = 0.25 (Raventos et al.'s d and noise; n = 16 keeps a 2-core run short):
  exact        for M = 2^0 .. 2^15 and 8 pools each, the one-layer theory (docs/theory.md A.10): the
               risk on fresh tasks of Gamma*_pool (the optimum of the family on the pool), and on the
               pool's own tasks; the prior's R* beside them (M -> infinity).
  bayes        the two Bayes predictors on fresh tasks and on the pool's tasks (pool seed 0): ridge (the
               Gaussian prior's posterior mean) and dMMSE (the pool's), by Monte Carlo.
  trained      one LSA layer trained on pools of M = 1, 16, 256, 4096, 32768 tasks (seed 0, the same
               pools as the exact curve's first), twice: in the family (p_x, q21 held at 0, where the
               theory is exact) and in the full parameterisation (where p_x can fit the pool's mean); and a
               two-layer LSA (full parameterisation, learning rate 0.01), which no exact theory covers.
Writes exact.csv, bayes.csv, trained.csv, diversity.png and summary.json. Three or more layers and the
GPT-2-style transformer are not trained here (results/README.md says why). About 11 minutes on 2 shared
CPU cores.
"""

import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

import icl_theory
from icl_theory import cli
from icl_theory.configs import sweep
from icl_theory.engine import files, plotting
from icl_theory.regression import pool, theory
from icl_theory.regression.task import RegressionTask

_OUT = flags.DEFINE_string("out", os.path.join("results", "diversity"), "Folder for the tables and figure.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the sweeps here (resumable); default: a temporary folder.")

D, N, NOISE_STD = 8, 16, 0.5
ALL_M = tuple(2**k for k in range(16))
TRAINED_M = (1, 16, 256, 4096, 32768)
EXACT_POOLS = 8
BAYES_SAMPLES = 4096


def _task(pool_=None) -> RegressionTask:
  return RegressionTask(d=D, n=N, noise_std=NOISE_STD, pool=pool_)


def exact_rows() -> list[dict]:
  rows = []
  prior = _task()
  r_star = float(theory.optimal_risk(prior))
  for m in ALL_M:
    fresh, on_pool = [], []
    for seed in range(EXACT_POOLS):
      task = _task(pool.draw_pool(seed, m, prior.cov_w))
      fresh.append(float(pool.pool_optimal_fresh_risk(task)))
      on_pool.append(float(theory.gamma_risk(pool.pool_optimal_gamma(task), pool.moment_task(task))))
    rows.append({"num_tasks": m, "fresh_risk_seed0": fresh[0], "fresh_risk_mean": float(np.mean(fresh)),
                 "fresh_risk_sd": float(np.std(fresh, ddof=1)), "pool_risk_seed0": on_pool[0],
                 "pool_risk_mean": float(np.mean(on_pool)), "optimal_risk": r_star})
  return rows


def bayes_rows() -> list[dict]:
  rows = []
  prior = _task()
  key = jax.random.PRNGKey(20_231)
  for m in ALL_M:
    task = _task(pool.draw_pool(0, m, prior.cov_w))
    pool_ = jnp.asarray(task.pool)
    fresh = pool.predictor_risks_mc(key, prior, BAYES_SAMPLES, None, pool_)
    on_pool = pool.predictor_risks_mc(jax.random.fold_in(key, 1), task, BAYES_SAMPLES, None, pool_)
    rows.append({"num_tasks": m,
                 "dmmse_fresh": float(fresh["dmmse"].value), "dmmse_fresh_stderr": float(fresh["dmmse"].stderr),
                 "ridge_fresh": float(fresh["ridge"].value), "ridge_fresh_stderr": float(fresh["ridge"].stderr),
                 "dmmse_pool": float(on_pool["dmmse"].value), "dmmse_pool_stderr": float(on_pool["dmmse"].stderr),
                 "ridge_pool": float(on_pool["ridge"].value), "ridge_pool_stderr": float(on_pool["ridge"].stderr)})
  return rows


def grid(frozen: bool, num_layers: int = 1):
  config = sweep.get_config()
  # Two layers train at a smaller learning rate (as in results/lsa/depth: 0.05 diverges there).
  config.base.update(d=D, n=N, noise_std=NOISE_STD, steps=1000, batch_size=1024,
                     learning_rate=0.05 if num_layers == 1 else 0.01, num_layers=num_layers,
                     log_every=500, checkpoint_every=500, eval_samples=10_000, pool_bayes_samples=512,
                     freeze_vanishing_parts=frozen)
  config.n_values, config.cov_x_values, config.cov_w_values = (N,), ("identity",), ("identity",)
  config.noise_std_values = (NOISE_STD,)
  config.num_tasks_values = TRAINED_M
  config.num_layers_values = (num_layers,)  # the sweep config's default axis would set every run to one layer
  config.num_seeds = 1
  return config


TRAINED_COLUMNS = ("num_tasks", "parameterisation", "learned_risk", "model_risk_mc", "model_risk_mc_stderr",
                   "pool_optimal_fresh_risk", "optimal_risk", "pool_gamma_rel_error", "gamma_rel_error",
                   "learned_pool_risk", "model_risk_mc_pool", "model_risk_mc_pool_stderr", "pool_optimal_pool_risk",
                   "p_x_rel", "p_x_mean_cosine", "p_x_pool_risk_gain", "ridge_risk", "pool_bayes_risk",
                   "final_train_loss", "status")


def trained_rows(workdir: str) -> list[dict]:
  rows = []
  for frozen, layers, name in ((True, 1, "sparse"), (False, 1, "full"), (False, 2, "two_layers")):
    for row in icl_theory.run_sweep(grid(frozen, layers), os.path.join(workdir, name), verbose=True):
      rows.append({**{k: row.get(k) for k in TRAINED_COLUMNS}, "parameterisation": name})
  return rows


def plot(exact, bayes, trained, path):
  import matplotlib.pyplot as plt  # after engine.plotting chose the headless backend
  fig, (ax_fresh, ax_pool) = plt.subplots(1, 2, figsize=(12, 4.5))
  m = np.array([r["num_tasks"] for r in exact])
  mean, sd = np.array([r["fresh_risk_mean"] for r in exact]), np.array([r["fresh_risk_sd"] for r in exact])
  ax_fresh.plot(m, [r["fresh_risk_seed0"] for r in exact], "k-", label="one layer, exact: R(Gamma*_pool), pool seed 0")
  ax_fresh.fill_between(m, mean - sd, mean + sd, color="k", alpha=0.12,
                        label=f"exact, mean +- sd over {EXACT_POOLS} pools")
  ax_fresh.axhline(exact[0]["optimal_risk"], color="k", ls=":", label="R* (the prior's optimum, M = infinity)")
  ax_pool.plot(m, [r["pool_risk_seed0"] for r in exact], "k-", label="one layer, exact: R_pool(Gamma*_pool)")
  for ax, which in ((ax_fresh, "fresh"), (ax_pool, "pool")):
    ax.errorbar(m, [r[f"dmmse_{which}"] for r in bayes], [2 * r[f"dmmse_{which}_stderr"] for r in bayes],
                color="tab:red", marker=".", label="dMMSE (posterior mean, pool prior)")
    ax.errorbar(m, [r[f"ridge_{which}"] for r in bayes], [2 * r[f"ridge_{which}_stderr"] for r in bayes],
                color="tab:blue", marker=".", label="ridge (posterior mean, Gaussian prior)")
    labels = {"sparse": "trained layer, sparse (p_x = q21 = 0)", "full": "trained layer, full",
              "two_layers": "trained 2-layer LSA, full"}
    for name, marker, color in (("sparse", "o", "tab:green"), ("full", "s", "tab:purple"),
                                ("two_layers", "^", "tab:orange")):
      rows = [r for r in trained if r["parameterisation"] == name and r["status"] == "finished"]
      key = "model_risk_mc" if which == "fresh" else "model_risk_mc_pool"
      ax.errorbar([r["num_tasks"] for r in rows], [r[key] for r in rows], [2 * r[f"{key}_stderr"] for r in rows],
                  ls="none", marker=marker, mfc="none", color=color,
                  label=labels[name])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("number of pretraining tasks M")
    ax.legend(fontsize=7)
  ax_fresh.set_ylabel("risk on fresh tasks from the prior")
  ax_pool.set_ylabel("risk on the pool's own tasks")
  fig.suptitle(f"Task diversity, d={D}, n={N}, sigma^2={NOISE_STD**2:g} (error bars: 2 stderr)")
  fig.tight_layout()
  plotting.save(fig, path)  # atomic: a killed run leaves the previous figure, not half of one


def main(argv):
  cli.only_flags(argv)
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  exact = exact_rows()
  files.write_csv(os.path.join(out, "exact.csv"), exact, list(exact[0]), significant=6)
  bayes = bayes_rows()
  files.write_csv(os.path.join(out, "bayes.csv"), bayes, list(bayes[0]), significant=6)
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="diversity-")
  try:
    trained = trained_rows(workdir)
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(workdir, ignore_errors=True)
  files.write_csv(os.path.join(out, "trained.csv"), trained, TRAINED_COLUMNS, significant=6)
  plot(exact, bayes, trained, os.path.join(out, "diversity.png"))
  sparse = [r for r in trained if r["parameterisation"] == "sparse" and r["status"] == "finished"]
  summary = {"d": D, "n": N, "noise_var": NOISE_STD**2, "optimal_risk": exact[0]["optimal_risk"],
             "max_pool_gamma_rel_error_sparse": max(r["pool_gamma_rel_error"] for r in sparse),
             "max_abs_z_sparse_fresh": max(abs(r["model_risk_mc"] - r["pool_optimal_fresh_risk"])
                                           / r["model_risk_mc_stderr"] for r in sparse)}
  files.write_json(os.path.join(out, "summary.json"), summary)
  print(files.read_json(os.path.join(out, "summary.json")))


if __name__ == "__main__":
  cli.run(main)
