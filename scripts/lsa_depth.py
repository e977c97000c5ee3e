r"""Depth: L-layer LSAs held to L steps of GD (Ahn, Cheng, Daneshmand, Sra 2023), written to results/lsa/depth/.

    python3 scripts/lsa_depth.py [--part=sweep,mechanism] [--out=results/lsa/depth] [--workdir=DIR]

sweep/      L = 1..8 sparse layers and L = 1..FULL_DEPTHS full ones, at d = 5, n in
            {5, 10, 20, 40}, sigma in {0, 0.5}, two seeds: each run's risk on fresh
            prompts beside L-step GD at its best step size, L-step GD preconditioned
            by Sigma^-1, and ridge (Bayes). depth.csv (one row per run),
            depth_summary.csv (seeds averaged), depth_vs_gd.png.
mechanism/  sparse and sparse_gd (B = 0: exactly GD) L in {2, 4} at n = 20, sigma = 0, on isotropic and rotated
            ill-conditioned cov_x: each layer's preconditioner Gamma_l = -p_l Q_l^T
            beside its best multiple of Sigma^-1 (Ahn et al.'s theory), B_l beside a
            multiple of I, and the network's predictions beside L steps of GD
            preconditioned by Sigma^-1 with the best per-step scalars.
            mechanism_layers.csv, mechanism_gd.csv.
masks/      which entries destabilise the full parameterisation: L = 4, n = 20, sigma = 0,
            the sweep's recipe, with the prediction read out as minus the query's y-entry
            and p_y started at the same value (0.02, then 1) for every parameterisation
            (sparse, sparse_gd, y_to_x, full), so that only the mask differs. masks.csv.

Every training setting (steps, batch size) is ours, sized so that the study takes
about 20 minutes on 2 shared CPU cores: the sweeps' vmapped groups train the two
noise levels and two seeds of one (parameterisation, L, n) as one program. With
--workdir every part resumes after a kill.
"""

import itertools
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

import icl_theory
from icl_theory import cli
from icl_theory.configs import lsa as lsa_config
from icl_theory.configs import sweep
from icl_theory.engine import files, sharding
from icl_theory.engine.plotting import plt
from icl_theory.engine.plotting import save as save_figure
from icl_theory.regression import depth, multistep, parameterization
from icl_theory.regression.task import sample_prompts

PARTS = ("sweep", "mechanism", "masks")
_PART = flags.DEFINE_list("part", list(PARTS), f"Which parts: a subset of {','.join(PARTS)}.")
_OUT = flags.DEFINE_string("out", os.path.join("results", "lsa", "depth"), "Folder for the tables and figures.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the runs here (resumable); default: a temporary folder.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps of every run (default: TRAINING's); a smoke test's knob.")
_MAX_DEPTH = flags.DEFINE_integer("max_depth", 8, "Train depths up to this (a smoke test's knob).")

D = 5
NS = (5, 10, 20, 40)
NOISES = (0.0, 0.5)
SPARSE_DEPTHS = tuple(range(1, 9))
FULL_DEPTHS = (1, 2, 3, 4)  # the full parameterisation past four layers: see results/README.md
# Our guesses, sized for the CPU budget: the default optimiser (SGD, momentum 0.9, cosine, clip 1) for
# both parameterisations, 1000 steps of 256 fresh prompts: a budget that ends before the deep sparse
# layers do (the README's four-layer run, 8000 steps of 1024 at 0.05, is at 0.095 after 1000 steps,
# 0.0012 after 2000 and 0.00025 at the end). The default rate 0.05 for one layer; 0.01 for more: at
# n = 5, 0.05 sends four sparse layers to a non-finite loss (p_y started small or at 1, batch 256 or
# 1024), while 0.01 trains them to 0.72 (4-step GD: 1.76).
LEARNING_RATES = {1: 0.05, 2: 0.01}  # from this depth on
TRAINING = dict(d=D, steps=1000, batch_size=256, warmup_steps=100, log_every=250, checkpoint_every=250,
                eval_samples=20_000, gamma_mc_samples=100_000)
# The masks part starts every parameterisation's p_y at the same value, so that only the mask differs:
# the size of the full layer's N(0, 0.02^2) draw, and Ahn et al.'s 1 (the sparse forms' default).
MASKS_P_Y_INITS = (0.02, 1.0)
MECHANISM_COVS = ("identity", "geometric:10@0")
MECHANISM_DEPTHS = (2, 4)
MECHANISM_PARAMETERIZATIONS = ("sparse", "sparse_gd")
MECHANISM_TRAINING = dict(d=D, n=20, noise_std=0.0, steps=2000, batch_size=1024,
                          log_every=1000, checkpoint_every=1000, eval_samples=20_000, gamma_mc_samples=100_000)
MECHANISM_SAMPLES = 20_000


def learning_rate(num_layers: int) -> float:
  return LEARNING_RATES[max(k for k in LEARNING_RATES if k <= num_layers)]


def depth_grid(name: str, depths: tuple[int, ...]):
  """One sweep per learning rate: `depths` all train at `learning_rate(depths[0])`."""
  grid = sweep.get_config()
  grid.base.update(parameterization=name, learning_rate=learning_rate(depths[0]), **TRAINING)
  if _STEPS.value:
    grid.base.update(steps=_STEPS.value, warmup_steps=min(100, _STEPS.value // 2), log_every=_STEPS.value,
                     checkpoint_every=_STEPS.value)
  grid.num_layers_values = depths
  grid.n_values = NS
  grid.cov_x_values, grid.cov_w_values = ("identity",), ("identity",)
  grid.noise_std_values = NOISES
  grid.num_seeds = 2
  return grid


def _row(row: dict, name: str) -> dict:
  """A sweep row as the depth table's: its risk beside GD with as many steps as it has layers."""
  steps = row["num_layers"]
  one = steps == 1
  return {
      "parameterization": name, "num_layers": steps, "n": row["n"], "noise_std": row["noise_std"],
      "seed": row["seed"], "learning_rate": learning_rate(steps), "status": row["status"],
      "model_risk_mc": row["model_risk_mc"], "model_risk_mc_stderr": row["model_risk_mc_stderr"],
      # One step: the exact one-step GD risk (Sigma = I, so preconditioning by Sigma^-1 is the same GD).
      "gd_same_steps_risk": row["one_step_gd_risk"] if one else row["multi_step_gd_risk"],
      "gd_same_steps_lr": row["one_step_gd_lr"] if one else row["multi_step_gd_lr"],
      "preconditioned_gd_same_steps_risk": row["one_step_gd_risk"] if one else row["multi_step_preconditioned_gd_risk"],
      "ridge_risk": row["ridge_risk"], "one_layer_optimal_risk": row["optimal_risk"],
      "risk_over_gd_same_steps": (None if row["model_risk_mc"] is None
                                  else row["model_risk_mc"] / (row["one_step_gd_risk"] if one
                                                               else row["multi_step_gd_risk"])),
      "final_train_loss": row["final_train_loss"],
  }


def summarise(table: list[dict]) -> list[dict]:
  """Seeds averaged: mean risk, how many seeds finished, and whether every finished seed beat GD."""
  keys = sorted({(r["parameterization"], r["num_layers"], r["n"], r["noise_std"]) for r in table})
  out = []
  for key in keys:
    rows = [r for r in table if (r["parameterization"], r["num_layers"], r["n"], r["noise_std"]) == key]
    done = [r for r in rows if r["status"] == "finished"]
    risks = [r["model_risk_mc"] for r in done]
    out.append({"parameterization": key[0], "num_layers": key[1], "n": key[2], "noise_std": key[3],
                "seeds": len(rows), "finished": len(done),
                "model_risk_mean": float(np.mean(risks)) if risks else None,
                "model_risk_max": float(np.max(risks)) if risks else None,
                "gd_same_steps_risk": rows[0]["gd_same_steps_risk"],
                "preconditioned_gd_same_steps_risk": rows[0]["preconditioned_gd_same_steps_risk"],
                "ridge_risk": rows[0]["ridge_risk"],
                "every_seed_below_gd": bool(done) and len(done) == len(rows)
                and all(r["model_risk_mc"] < r["gd_same_steps_risk"] for r in done)})
  return out


def plot(summary: list[dict], path: str) -> None:
  """Risk against depth, one panel per (sigma, n): both parameterisations beside L-step GD and ridge."""
  fig, axes = plt.subplots(len(NOISES), len(NS), figsize=(4 * len(NS), 3.4 * len(NOISES)), layout="constrained",
                           squeeze=False)
  for i, noise in enumerate(NOISES):
    for j, n in enumerate(NS):
      ax = axes[i, j]
      rows = [r for r in summary if r["n"] == n and r["noise_std"] == noise]
      sparse = sorted((r for r in rows if r["parameterization"] == "sparse"), key=lambda r: r["num_layers"])
      gd = [(r["num_layers"], r["gd_same_steps_risk"]) for r in sparse]
      ax.plot(*zip(*gd), "k--", label="L-step GD, best step")
      pre = [(r["num_layers"], r["preconditioned_gd_same_steps_risk"]) for r in sparse]
      ax.plot(*zip(*pre), "k:", label="L-step GD, $\\Sigma^{-1}$")
      for name, color in (("sparse", "C0"), ("full", "C3")):
        got = [(r["num_layers"], r["model_risk_mean"]) for r in rows
               if r["parameterization"] == name and r["model_risk_mean"] is not None]
        if got:
          ax.plot(*zip(*sorted(got)), "o-", color=color, label=f"LSA, {name}")
        lost = [r["num_layers"] for r in rows if r["parameterization"] == name and r["finished"] < r["seeds"]]
        for depth_lost in lost:
          ax.axvline(depth_lost, color=color, alpha=0.3, lw=4)
      if sparse[0]["ridge_risk"] > 1e-6:
        ax.axhline(sparse[0]["ridge_risk"], color="C2", ls="-.", label="ridge (Bayes)")
      ax.set_yscale("log")
      ax.set_title(f"n = {n}, $\\sigma$ = {noise:g}")
      ax.set_xlabel("layers L (GD steps)")
      if j == 0:
        ax.set_ylabel("risk on fresh prompts")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("L-layer LSA (mean of seeds) against L steps of GD; shaded: a seed did not finish", fontsize=10)
  save_figure(fig, path)


def run_sweeps(workdir: str, out: str) -> None:
  table = []
  for name, all_depths in (("sparse", SPARSE_DEPTHS), ("full", FULL_DEPTHS)):
    for rate in sorted(set(map(learning_rate, all_depths)), reverse=True):
      depths = tuple(L for L in all_depths if learning_rate(L) == rate and L <= _MAX_DEPTH.value)
      if depths:
        rows = icl_theory.run_sweep(depth_grid(name, depths), os.path.join(workdir, f"depth_{name}_lr{rate:g}"))
        table += [_row(row, name) for row in rows]
  summary = summarise(table)
  os.makedirs(out, exist_ok=True)
  files.write_csv(os.path.join(out, "depth.csv"), table, significant=5)
  files.write_csv(os.path.join(out, "depth_summary.csv"), summary, significant=5)
  plot(summary, os.path.join(out, "depth_vs_gd.png"))
  logging.info("depth sweep: %d runs written to %s", len(table), out)


def run_masks(workdir: str, out: str) -> None:
  table = []
  for p_y in MASKS_P_Y_INITS:
    grid = depth_grid("sparse", (4,))
    grid.base.update(readout="minus", p_y_init=p_y)
    grid.n_values, grid.noise_std_values = (20,), (0.0,)
    grid.parameterization_values = parameterization.PARAMETERIZATIONS
    rows = icl_theory.run_sweep(grid, os.path.join(workdir, f"masks_p_y{p_y:g}"))
    table += [{"parameterization": r["parameterization"], "readout": "minus", "p_y_init": p_y, "trainable_per_layer":
               parameterization.num_trainable(r["parameterization"], D), **{k: r[k] for k in (
                   "seed", "status", "model_risk_mc", "model_risk_mc_stderr", "multi_step_gd_risk",
                   "final_train_loss")}}
              for r in rows]
  os.makedirs(out, exist_ok=True)
  files.write_csv(os.path.join(out, "masks.csv"), table, significant=5)


def run_mechanism(workdir: str, out: str) -> None:
  layers, gaps = [], []
  key = jax.random.PRNGKey(2024)
  for name, cov, steps in itertools.product(MECHANISM_PARAMETERIZATIONS, MECHANISM_COVS, MECHANISM_DEPTHS):
    config = lsa_config.get_config()
    config.update(parameterization=name, cov_x=cov, num_layers=steps, **MECHANISM_TRAINING)
    if _STEPS.value:
      config.update(steps=_STEPS.value, warmup_steps=min(100, _STEPS.value // 2), log_every=_STEPS.value,
                    checkpoint_every=_STEPS.value)
    run = f"{cov.replace(':', '_')}-L{steps}" + ("" if name == "sparse" else f"-{name}")
    result = icl_theory.train(config, os.path.join(workdir, "mechanism", run))
    task = result.task
    cov_x = np.asarray(task.cov_x, np.float64)
    for row in depth.layer_preconditioners(result.params, cov_x):
      layers.append({"parameterization": name, "cov_x": cov, "num_layers": steps, **row})
    inverse = jnp.linalg.inv(task.cov_x)
    lrs = multistep.best_per_step_lrs(task, jax.random.fold_in(key, steps), steps, MECHANISM_SAMPLES, inverse)
    prompts = sample_prompts(jax.random.fold_in(key, 100 + steps), task, MECHANISM_SAMPLES)
    gaps.append({"parameterization": name, "cov_x": cov, "num_layers": steps,
                 "per_step_lrs": " ".join(f"{x:.4g}" for x in lrs),
                 **depth.prediction_gaps(result.params, prompts, cov_x, lrs)})
  os.makedirs(out, exist_ok=True)
  files.write_csv(os.path.join(out, "mechanism_layers.csv"), layers, significant=5)
  files.write_csv(os.path.join(out, "mechanism_gd.csv"), gaps, significant=5)
  logging.info("depth mechanism written to %s", out)


def main(argv) -> None:
  cli.only_flags(argv)
  cli.check_subset("part", _PART.value, PARTS)
  sharding.use_cpu_cores()  # one CPU device per core: the runs of each sweep group are split over them
  with tempfile.TemporaryDirectory() as tmp:
    workdir = _WORKDIR.value or tmp
    if "sweep" in _PART.value:
      run_sweeps(workdir, _OUT.value)
    if "mechanism" in _PART.value:
      run_mechanism(workdir, _OUT.value)
    if "masks" in _PART.value:
      run_masks(workdir, _OUT.value)


if __name__ == "__main__":
  cli.run(main)
