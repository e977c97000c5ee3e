r"""Distribution shift at test time for one trained LSA layer, scored exactly, under results/shift/.

    python3 scripts/shift.py [--out=results/shift] [--workdir=DIR]

One layer is trained once (d = 5, n = 10, sigma = 0.5, cov_x = geometric:4@0, cov_w = I: an anisotropic
covariance, so that a rotation is a shift) and scored on other test distributions without retraining
(`icl_theory.regression.shift.evaluate_shift`):
  prompt_length.csv    n_test = 2 .. 320: the exact risk of the learned Gamma_eff, the network's Monte Carlo
                       risk, R*_test (the test length's own optimum), Gamma*_train's risk, ridge and one-step GD
  covariance.csv       cov_x_test = s cov_x (scale s = 1/4 .. 4), and cov_x rotated by an angle theta in the
                       plane of its largest and smallest eigenvectors (0 .. 90 degrees)
  shift.png            both, and summary.json (the largest |exact - Monte Carlo| in standard errors)
About 2 minutes on 2 CPU cores.
"""

import os
import shutil
import tempfile

import numpy as np
from absl import flags

import icl_theory
from icl_theory import cli
from icl_theory.configs import lsa
from icl_theory.engine import files, plotting
from icl_theory.regression import shift

_OUT = flags.DEFINE_string("out", os.path.join("results", "shift"), "Folder for the tables and figure.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the trained run here (resumable); default: a temporary folder.")

N_TEST = (2, 3, 5, 10, 20, 40, 80, 160, 320)
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
ANGLES_DEG = (0, 15, 30, 45, 60, 75, 90)
NUM_SAMPLES = 40_000
COLUMNS = ("learned_risk_test", "model_risk_mc_test", "model_risk_mc_test_stderr", "optimal_risk_test",
           "risk_gap_test", "train_optimal_risk_test", "ridge_risk_test", "ridge_risk_test_stderr",
           "one_step_gd_risk_test", "gamma_rel_error_test")


def config():
  c = lsa.get_config()
  c.update(d=5, n=10, noise_std=0.5, cov_x="geometric:4@0", cov_w="identity", steps=3000, batch_size=1024,
           log_every=1000, checkpoint_every=1000, eval_samples=NUM_SAMPLES)
  return c


def rotation(cov_x: np.ndarray, degrees: float) -> np.ndarray:
  """cov_x turned by `degrees` in the plane of its largest and smallest eigenvectors (the largest change)."""
  values, vectors = np.linalg.eigh(cov_x)
  small, large = vectors[:, 0], vectors[:, -1]
  t = np.deg2rad(degrees)
  turn = np.eye(len(values)) + np.sin(t) * (np.outer(small, large) - np.outer(large, small)) \
      + (np.cos(t) - 1) * (np.outer(small, small) + np.outer(large, large))
  return turn @ cov_x @ turn.T


def _row(out: dict, **coordinates) -> dict:
  return {**coordinates, **{k: out[k] for k in COLUMNS}}


def plot(length_rows, cov_rows, path):
  import matplotlib.pyplot as plt  # after engine.plotting chose the headless backend
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))

  def panel(ax, rows, x, xlabel, log_x):
    xs = [r[x] for r in rows]
    ax.plot(xs, [r["learned_risk_test"] for r in rows], "k-", label="trained layer, exact R_test(Gamma_eff)")
    ax.errorbar(xs, [r["model_risk_mc_test"] for r in rows], [2 * r["model_risk_mc_test_stderr"] for r in rows],
                ls="none", marker="o", mfc="none", color="k", label="trained network, Monte Carlo (2 stderr)")
    ax.plot(xs, [r["optimal_risk_test"] for r in rows], "g--", label="R*_test (the test distribution's optimum)")
    ax.plot(xs, [r["ridge_risk_test"] for r in rows], "b:", label="ridge (Bayes) on the test distribution")
    ax.plot(xs, [r["one_step_gd_risk_test"] for r in rows], color="0.6", ls="-.", label="one-step GD, best step")
    ax.set_xlabel(xlabel)
    if log_x:
      ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("risk on the test distribution")

  panel(axes[0], length_rows, "n_test", "test prompt length n_test (trained at n = 10)", True)
  panel(axes[1], [r for r in cov_rows if r["shift"] == "scale"], "scale", "cov_x_test = s cov_x (trained at s = 1)",
        True)
  panel(axes[2], [r for r in cov_rows if r["shift"] == "rotation"], "degrees",
        "rotation of cov_x by theta (degrees)", False)
  axes[1].set_xticks(SCALES, [f"{s:g}" for s in SCALES])
  axes[1].minorticks_off()
  axes[0].legend(fontsize=7)
  fig.suptitle("One LSA layer (d=5, n=10, sigma=0.5, cov_x geometric:4@0) scored on shifted test distributions")
  fig.tight_layout()
  plotting.save(fig, path)  # atomic: a killed run leaves the previous figure, not half of one


def main(argv):
  cli.only_flags(argv)
  out_dir = _OUT.value
  os.makedirs(out_dir, exist_ok=True)
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="shift-")
  try:
    run = icl_theory.train(config(), workdir)
    loaded = icl_theory.load_run(workdir)
    cov_x = np.asarray(run.task.cov_x, np.float64)
    length_rows = [_row(shift.evaluate_shift(loaded, n_test=n), n_test=n) for n in N_TEST]
    cov_rows = [_row(shift.evaluate_shift(loaded, cov_x_test=s * cov_x), shift="scale", scale=s, degrees=0)
                for s in SCALES]
    cov_rows += [_row(shift.evaluate_shift(loaded, cov_x_test=rotation(cov_x, a)), shift="rotation", scale=1.0,
                      degrees=a) for a in ANGLES_DEG]
    trained_gamma_error = run.summary["gamma_rel_error"]
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(workdir, ignore_errors=True)
  files.write_csv(os.path.join(out_dir, "prompt_length.csv"), length_rows, ("n_test",) + COLUMNS)
  files.write_csv(os.path.join(out_dir, "covariance.csv"), cov_rows, ("shift", "scale", "degrees") + COLUMNS)
  plot(length_rows, cov_rows, os.path.join(out_dir, "shift.png"))
  rows = length_rows + cov_rows
  z = [abs(r["learned_risk_test"] - r["model_risk_mc_test"]) / r["model_risk_mc_test_stderr"] for r in rows]
  files.write_json(os.path.join(out_dir, "summary.json"), {
      "trained_gamma_rel_error": trained_gamma_error, "num_evaluations": len(rows),
      "max_abs_z_exact_vs_monte_carlo": max(z), "num_samples": NUM_SAMPLES})
  print(files.read_json(os.path.join(out_dir, "summary.json")))


if __name__ == "__main__":
  cli.run(main)
