r"""The LSA paper's claims as tables and figures under results/lsa/ (Mahankali, Hashimoto, Ma 2023).

    python3 scripts/lsa_paper.py [--claim=isotropic,preconditioned] [--out=results/lsa] [--workdir=DIR]

isotropic/       one step of GD: over n (2 to 128) and sigma in {0, 0.5, 1}, the
                 learned step size (mean diagonal of Gamma_eff) against
                 eta* = n/(n+d+1+sigma^2), the off-diagonal mass, and the risk of
                 the trained layer beside one-step GD at eta*, ridge/Bayes and OLS.
preconditioned/  preconditioned GD: over the condition number of cov_x (1 to 100,
                 rotated), Gamma_eff cov_x against eta* I for cov_w = cov_x^-1, and
                 Gamma_eff against n[(n+1) cov_x + (tr cov_x + sigma^2) I]^-1 for
                 cov_w = I, with the best plain GD step's risk beside R*.
nonlinear/       still plain GD: for y = relu, tanh, cube, abs of w^T x and a random
                 ReLU network, Gamma_eff against eta_f I (eta_f by Monte Carlo), the
                 off-diagonal mass, and the layer's risk beside the best linear
                 (preconditioned-GD) predictor, one-step GD at eta_f, ridge and OLS;
                 and cube once more with p_x and q21 held at 0 (an ablation).
(depth/, L-layer LSAs against L steps of GD, is scripts/lsa_depth.py's.)

Each claim is one sweep (icl_theory.run_sweep), or two (nonlinear: full and sparse):
with --workdir it resumes after a kill; without, it trains in a temporary
folder and copies only the tables and figures. Each takes a few minutes on 2 CPU
cores.
"""

import os
import shutil
import tempfile

import numpy as np
from absl import flags, logging

import icl_theory
from icl_theory import cli
from icl_theory.engine import files, sharding
from icl_theory.regression import plots
from icl_theory.configs import sweep

CLAIMS = ("isotropic", "preconditioned", "nonlinear")
_CLAIM = flags.DEFINE_list("claim", list(CLAIMS), f"Which claims: a subset of {','.join(CLAIMS)}.")
_OUT = flags.DEFINE_string("out", os.path.join("results", "lsa"), "Folder for the result folders.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the sweeps here (resumable); default: a temporary folder.")

D = 5
CONDITIONS = (1, 3, 10, 30, 100)


def isotropic_grid():
  grid = sweep.get_config()
  grid.base.update(d=D, steps=3000, batch_size=1024, eval_samples=20_000)
  grid.n_values = (2, 3, 5, 8, 13, 20, 32, 50, 80, 128)
  grid.cov_x_values, grid.cov_w_values = ("identity",), ("identity",)
  grid.noise_std_values = (0.0, 0.5, 1.0)
  grid.num_seeds = 2
  return grid


def preconditioned_grid():
  grid = sweep.get_config()
  # Ill-conditioned cov_x trains slowly along its weak directions: many more steps.
  grid.base.update(d=D, steps=16_000, batch_size=1024, eval_samples=20_000, log_every=2000, checkpoint_every=4000)
  grid.n_values = (20,)
  grid.cov_x_values = tuple(f"geometric:{c}@0" for c in CONDITIONS)
  grid.cov_w_values = ("inverse", "identity")
  grid.noise_std_values = (0.5,)
  grid.num_seeds = 2
  return grid


def preconditioned_curvature_grid():
  """The same grid trained with the curvature preconditioner (`preconditioner='curvature'`), 4000 steps."""
  grid = preconditioned_grid()
  grid.base.update(steps=4000, log_every=1000, checkpoint_every=2000, preconditioner="curvature")
  return grid


RESPONSES = ("relu", "tanh", "cube", "abs", "mlp")


def nonlinear_grid():
  grid = sweep.get_config()
  # Explicit token prompts (the Wishart statistic needs Gaussian y): slower steps.
  grid.base.update(d=D, steps=3000, batch_size=1024, eval_samples=50_000, gamma_mc_samples=1_000_000,
                   log_every=500, checkpoint_every=1000)
  grid.n_values = (10, 40)
  grid.cov_x_values, grid.cov_w_values = ("identity",), ("identity",)
  grid.noise_std_values = (0.0,)
  grid.response_values = RESPONSES
  grid.num_seeds = 2
  return grid


def nonlinear_sparse_grid():
  """cube again, with p_x and q21 held at 0: whether the noise along them is what keeps the layer at 0.

  For y = (w^T x)^3 the batch gradient on q21 is p_y S_yy y_q x_q (S_yy the mean
  y_i^2), whose variance involves E||w||^18: at initialisation (n = 10) its noise is
  ~300 times the mean gradient on Q11, against ~1 for linear and relu responses.
  """
  grid = nonlinear_grid()
  grid.base.freeze_vanishing_parts = True
  grid.response_values = ("cube",)
  return grid


# cube in the full parameterisation, trained as it trains: the query integrated out (Stein's lemma),
# each prompt paired with its mirror (y negated) and Adam without clipping. Adam's per-coordinate scale
# is what matters: q21's curvature is ~ E[S_yy^2] p_y^2, orders of magnitude above Q11's for this
# heavy-tailed response, so any single SGD step size either crawls along Q11 or needs clipping along
# q21, whose bias kept SGD 3-7% from eta_f. With explicit query tokens Adam still falls to the
# rank-one saddle (the query's noise on q21); README "Nonlinear responses".
CUBE_TRAINING = dict(sampler="integrated_query", antithetic=True, optimizer="adam", learning_rate=1e-3,
                     clip_norm=0.0, batch_size=4096, steps=4000, log_every=500, checkpoint_every=2000)


def nonlinear_cube_grid():
  grid = nonlinear_grid()
  grid.base.update(**CUBE_TRAINING)
  grid.response_values = ("cube",)
  return grid


def isotropic_table(rows: list[dict]) -> list[dict]:
  """Per run: learned and theoretical step size, off-diagonal mass, and the risks."""
  table = []
  for row in rows:
    gamma = np.asarray(row["effective_gamma"], np.float64)
    n, sigma = row["n"], row["noise_std"]
    off = gamma - np.diag(np.diag(gamma))
    finite_ols = sigma == 0 or not D <= n <= D + 1  # E[OLS risk] is infinite at n = d, d + 1 with noise
    table.append({
        "d": D, "n": n, "noise_std": sigma, "seed": row["seed"],
        "learned_eta": float(np.diag(gamma).mean()), "eta_star": n / (n + D + 1 + sigma**2),
        "offdiag_mass": float(np.linalg.norm(off) / np.linalg.norm(gamma)),
        "gamma_rel_error": row["gamma_rel_error"],
        "learned_risk": row["learned_risk"], "model_risk_mc": row["model_risk_mc"],
        "model_risk_mc_stderr": row["model_risk_mc_stderr"], "optimal_risk": row["optimal_risk"],
        "one_step_gd_risk": row["one_step_gd_risk"], "ridge_risk": row["ridge_risk"],
        "ridge_risk_stderr": row["ridge_risk_stderr"],
        "ols_risk": row["ols_risk"] if finite_ols else None,
    })
  return table


def preconditioned_table(rows: list[dict]) -> list[dict]:
  """Per run: the preconditioner against its closed form, and plain GD's risk against R*."""
  table = []
  for row in rows:
    gamma = np.asarray(row["effective_gamma"], np.float64)
    task = icl_theory.RegressionTask(d=D, n=row["n"], cov_x=row["cov_x"], cov_w=row["cov_w"],
                                     noise_std=row["noise_std"])
    cov_x = np.asarray(task.cov_x, np.float64)
    eta_star = row["n"] / (row["n"] + D + 1 + row["noise_std"] ** 2)
    product = gamma @ cov_x  # = eta* I when cov_w = cov_x^-1
    table.append({
        "condition": float(row["cov_x"].split(":")[1].split("@")[0]), "cov_w": row["cov_w"], "seed": row["seed"],
        "training": row.get("training", "plain"),
        "gamma_rel_error": row["gamma_rel_error"],
        "gamma_cov_x_rel_error": (float(np.linalg.norm(product - eta_star * np.eye(D)) / (eta_star * np.sqrt(D)))
                                  if row["cov_w"] == "inverse" else None),
        "learned_risk": row["learned_risk"], "optimal_risk": row["optimal_risk"],
        "one_step_gd_risk": row["one_step_gd_risk"],
        "plain_gd_excess": row["one_step_gd_risk"] / row["optimal_risk"] - 1,
        "learned_excess": row["learned_risk"] / row["optimal_risk"] - 1,
        "ridge_risk": row["ridge_risk"],
    })
  return table


def nonlinear_table(rows: list[dict]) -> list[dict]:
  """Per run: Gamma_eff against eta_f I, on the scale of the linear task's eta* I (eta_f = 0 for abs)."""
  table = []
  for row in rows:
    gamma = np.asarray(row["effective_gamma"], np.float64)
    n, eta_f = row["n"], row["one_step_gd_lr"]
    scale = np.sqrt(D) * n / (n + D + 1)  # ||eta* I||_F of the linear task with the same n
    off = gamma - np.diag(np.diag(gamma))
    variant = row.get("parameterisation", "full")
    names = {"full": row["response"], "sparse": f"{row['response']} sparse",
             "full, integrated query": f"{row['response']} (Stein, Adam)"}
    table.append({
        "response": names[variant], "n": n, "seed": row["seed"],
        "parameterisation": {"sparse": "sparse (p_x = q21 = 0)"}.get(variant, variant),
        "p_x_rel": row.get("p_x_rel"),
        "learned_eta": float(np.diag(gamma).mean()), "eta_f": eta_f,
        "error_vs_eta_f": float(np.linalg.norm(gamma - eta_f * np.eye(D)) / scale),
        "offdiag_mass": float(np.linalg.norm(off) / scale),
        "gamma_rel_error": row["gamma_rel_error"],
        "model_risk_mc": row["model_risk_mc"], "model_risk_mc_stderr": row["model_risk_mc_stderr"],
        "best_linear_risk": row["optimal_risk"], "one_step_gd_risk": row["one_step_gd_risk"],
        "ridge_risk": row["ridge_risk"], "ols_risk": row["ols_risk"],
    })
  return table


def run_claim(name: str, workdir: str, out: str) -> None:
  grid = {"isotropic": isotropic_grid, "preconditioned": preconditioned_grid, "nonlinear": nonlinear_grid}[name]()
  rows = icl_theory.run_sweep(grid, os.path.join(workdir, name))
  target = os.path.join(out, name)
  os.makedirs(target, exist_ok=True)
  shutil.copyfile(os.path.join(workdir, name, "results.csv"), os.path.join(target, "sweep_results.csv"))
  if name == "isotropic":
    table = isotropic_table(rows)
    plots.plot_isotropic_claim(table, target)
  elif name == "preconditioned":
    curvature_rows = icl_theory.run_sweep(preconditioned_curvature_grid(),
                                          os.path.join(workdir, "preconditioned_curvature"))
    shutil.copyfile(os.path.join(workdir, "preconditioned_curvature", "results.csv"),
                    os.path.join(target, "sweep_results_curvature.csv"))
    table = preconditioned_table([{**row, "training": "plain"} for row in rows]
                                 + [{**row, "training": "curvature"} for row in curvature_rows])
    plots.plot_preconditioned_claim(table, target)
  else:
    sparse_rows = icl_theory.run_sweep(nonlinear_sparse_grid(), os.path.join(workdir, "nonlinear_sparse"))
    shutil.copyfile(os.path.join(workdir, "nonlinear_sparse", "results.csv"),
                    os.path.join(target, "sweep_results_sparse.csv"))
    cube_rows = icl_theory.run_sweep(nonlinear_cube_grid(), os.path.join(workdir, "nonlinear_cube"))
    shutil.copyfile(os.path.join(workdir, "nonlinear_cube", "results.csv"),
                    os.path.join(target, "sweep_results_cube_stein.csv"))
    table = nonlinear_table(rows + [{**row, "parameterisation": "sparse"} for row in sparse_rows]
                            + [{**row, "parameterisation": "full, integrated query"} for row in cube_rows])
    plots.plot_nonlinear_claim(table, target)
  files.write_csv(os.path.join(target, f"{name}.csv"), table, significant=7)
  logging.info("%s: %d runs written to %s", name, len(rows), target)


def main(argv) -> None:
  cli.only_flags(argv)
  cli.check_subset("claim", _CLAIM.value, CLAIMS)
  sharding.use_cpu_cores()  # one CPU device per core: the runs of each sweep group are split over them
  with tempfile.TemporaryDirectory() as tmp:
    for name in _CLAIM.value:
      run_claim(name, _WORKDIR.value or tmp, _OUT.value)


if __name__ == "__main__":
  cli.run(main)
