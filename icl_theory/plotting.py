"""Matplotlib figures of runs; every function writes one PNG and returns nothing."""

from __future__ import annotations

from typing import Any, Sequence

import io
import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from icl_theory import files  # noqa: E402


def _save(fig, path: str) -> None:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  plt.close(fig)
  files.atomic_write_bytes(path, buffer.getvalue())


def _heatmap(ax, matrix: np.ndarray, title: str, vmax: float) -> None:
  image = ax.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
  ax.set_title(title)
  ax.set_xticks(range(matrix.shape[1]))
  ax.set_yticks(range(matrix.shape[0]))
  ax.figure.colorbar(image, ax=ax, shrink=0.85)


def plot_lsa_run(summary: dict[str, Any], history: Sequence[dict], path: str) -> None:
  """Gamma_eff beside Gamma* (when the LSA has one layer) and the training loss against R*."""
  gamma_star = np.asarray(summary["optimal_gamma"])
  has_gamma = summary.get("effective_gamma") is not None
  fig, axes = plt.subplots(1, 3 if has_gamma else 1, figsize=(15 if has_gamma else 5, 4), layout="constrained")
  axes = np.atleast_1d(axes)
  if has_gamma:
    gamma = np.asarray(summary["effective_gamma"])
    vmax = max(np.abs(gamma).max(), np.abs(gamma_star).max())
    _heatmap(axes[0], gamma, "learned $\\Gamma_{eff} = p_y Q_{11}^T$", vmax)
    _heatmap(axes[1], gamma_star, f"analytic $\\Gamma^*$ (rel. error {summary['gamma_rel_error']:.3f})", vmax)
  ax = axes[-1]
  if history:
    steps = [row["step"] for row in history]
    ax.plot(steps, [row["loss"] for row in history], label="training loss (batch mean)")
  ax.axhline(summary["optimal_risk"], color="k", ls="--", label=f"$R^*$ = {summary['optimal_risk']:.4f}")
  ax.axhline(summary["one_step_gd_risk"], color="C2", ls=":", label=f"best plain GD = {summary['one_step_gd_risk']:.4f}")
  ax.set_yscale("log")
  ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
  ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
  ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("step")
  ax.set_ylabel("squared error")
  ax.set_title("loss against the optimal risk")
  ax.legend(fontsize=8)
  _save(fig, path)


_BASELINES = (("optimal_risk", "$R^*$ (preconditioned GD, $\\Gamma^*$)", "k", "--"),
              ("one_step_gd_risk", "one-step GD, best $\\eta$", "C2", ":"),
              ("ridge_risk", "ridge / Bayes", "C3", "-."),
              ("ols_risk", "OLS", "C4", (0, (1, 3))))


def _setting(row: dict) -> str:
  """The grid coordinates other than n and seed, as a panel title."""
  parts = [f"cov_x={row['cov_x']}"]
  if row["cov_w"] != "identity":
    parts.append(f"cov_w={row['cov_w']}")
  if float(row["noise_std"]):
    parts.append(f"sigma={row['noise_std']}")
  if row["response"] != "linear":
    parts.append(row["response"])
  return ", ".join(parts)


def _by_setting(rows: Sequence[dict]) -> dict[str, list[dict]]:
  settings: dict[str, list[dict]] = {}
  for row in rows:
    if row["status"] == "finished":
      settings.setdefault(_setting(row), []).append(row)
  return settings


def _seed_stats(rows: Sequence[dict], key: str):
  """n values, and the mean, min and max over seeds of rows[key] at each n."""
  ns = sorted({int(r["n"]) for r in rows})
  values = [[float(r[key]) for r in rows if int(r["n"]) == n and r.get(key) is not None] for n in ns]
  keep = [i for i, v in enumerate(values) if v]
  ns = np.array(ns)[keep]
  values = [values[i] for i in keep]
  return ns, np.array([np.mean(v) for v in values]), np.array([min(v) for v in values]), np.array([max(v) for v in values])


def plot_sweep(rows: Sequence[dict], directory: str) -> None:
  """risk_vs_n.png, gamma_spectrum.png and gamma_rel_error.png for the rows of a sweep."""
  settings = _by_setting(rows)
  if not settings:
    return
  names = list(settings)
  cols = min(len(names), 4)
  grid = (-(-len(names) // cols), cols)

  # Risk against n, one panel per setting: the trained layer (seed band) and every baseline.
  fig, axes = plt.subplots(*grid, figsize=(4.2 * cols, 3.4 * grid[0]), layout="constrained", squeeze=False)
  for ax, name in zip(axes.flat, names):
    ns, mean, low, high = _seed_stats(settings[name], "model_risk_mc")
    ax.plot(ns, mean, "o-", color="C0", label="trained LSA (Monte Carlo)")
    ax.fill_between(ns, low, high, color="C0", alpha=0.25, label="min-max over seeds")
    for key, label, color, style in _BASELINES:
      ns_b, mean_b, _, _ = _seed_stats(settings[name], key)
      ax.plot(ns_b, mean_b, color=color, ls=style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    # Noiseless data put ridge and OLS at ~0 risk once n >= d: keep the axis on the LSA.
    ax.set_ylim(bottom=max(ax.get_ylim()[0], 0.05 * low.min()))
    ax.set_xlabel("prompt length n")
    ax.set_ylabel("risk")
    ax.set_title(name, fontsize=9)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  _save(fig, f"{directory}/risk_vs_n.png")

  # Singular values of Gamma_eff (points, each seed) against those of Gamma* (lines), per setting.
  fig, axes = plt.subplots(*grid, figsize=(4.2 * cols, 3.4 * grid[0]), layout="constrained", squeeze=False)
  for ax, name in zip(axes.flat, names):
    ns = sorted({int(r["n"]) for r in settings[name]})
    for color, n in zip(plt.cm.viridis(np.linspace(0, 0.9, len(ns))), ns):
      at_n = [r for r in settings[name] if int(r["n"]) == n]
      star = np.linalg.svd(np.asarray(at_n[0]["optimal_gamma"]), compute_uv=False)
      ax.plot(range(1, star.size + 1), star, "-", color=color, label=f"n={n}")
      for r in at_n:
        if r.get("effective_gamma") is not None:
          learned = np.linalg.svd(np.asarray(r["effective_gamma"]), compute_uv=False)
          ax.plot(range(1, learned.size + 1), learned, "o", color=color, ms=4, mfc="none")
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title(f"{name}\nlines $\\Gamma^*$, circles $\\Gamma_{{eff}}$", fontsize=9)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  _save(fig, f"{directory}/gamma_spectrum.png")

  # gamma_rel_error over the (n, setting) grid, mean over seeds.
  ns = sorted({int(r["n"]) for rows_ in settings.values() for r in rows_})
  table = np.full((len(names), len(ns)), np.nan)
  for i, name in enumerate(names):
    for j, n in enumerate(ns):
      errors = [float(r["gamma_rel_error"]) for r in settings[name]
                if int(r["n"]) == n and r.get("gamma_rel_error") is not None]
      if errors:
        table[i, j] = np.mean(errors)
  fig, ax = plt.subplots(figsize=(1.2 * len(ns) + 3.5, 0.6 * len(names) + 1.6), layout="constrained")
  image = ax.imshow(table, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(ns)), [str(n) for n in ns])
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.set_xlabel("prompt length n")
  for (i, j), value in np.ndenumerate(table):
    if np.isfinite(value):
      ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w" if value < np.nanmax(table) / 2 else "k",
              fontsize=8)
  fig.colorbar(image, ax=ax, label="gamma_rel_error (mean over seeds)")
  _save(fig, f"{directory}/gamma_rel_error.png")


def plot_classification_run(summary: dict[str, Any], history: Sequence[dict], path: str) -> None:
  """The hinge loss during training, and the ICL error beside majority vote against test prompt length and alpha'."""
  fig, (ax_loss, ax_len, ax_alpha) = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
  if history:
    ax_loss.plot([row["step"] for row in history], [row["loss"] for row in history], "o-", ms=3,
                 label="training loss (batch mean)")
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("hinge loss")
  ax_loss.set_ylim(bottom=0)
  ax_loss.set_title("training loss")
  ax_loss.legend(fontsize=8)

  config = summary["config"]
  panels = ((ax_len, summary["error_by_test_prompt_len"], "test_prompt_len", "test prompt length l",
             f"against prompt length ($\\alpha'$ = {config['alpha_test']:g}, $S_1$ = {config['s1']:g})"),
            (ax_alpha, summary["error_by_alpha_test"], "alpha_test",
             "$\\alpha'$ (share of contexts with the query's pattern)",
             f"against $\\alpha'$ (l = {config['test_prompt_len']}, $S_1$ = {config['s1']:g})"))
  for ax, rows, key, xlabel, title in panels:
    xs = [r[key] for r in rows]
    for prefix, label, color in (("unseen_task", "unseen tasks", "C0"), ("ood", "out of domain", "C1")):
      ax.errorbar(xs, [r[f"{prefix}_error"] for r in rows], yerr=[r[f"{prefix}_error_stderr"] for r in rows],
                  fmt="o-", color=color, capsize=3, label=f"ICL, {label}")
    ax.plot(xs, [r["unseen_task_majority_vote_error"] for r in rows], "k:", label="majority vote")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("classification error")
    ax.set_title(f"error {title}")
    ax.legend(fontsize=8)
  ax_len.set_xscale("log")
  lengths = [r["test_prompt_len"] for r in summary["error_by_test_prompt_len"]]
  ax_len.set_xticks(lengths, [str(n) for n in lengths])
  ax_len.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  _save(fig, path)


def _mean_by(table: Sequence[dict], group: str, x: str, y: str) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
  """For each value of `group`: the sorted x values and the mean of y over the rows (seeds) at each."""
  out = {}
  for g in sorted({row[group] for row in table}, key=str):
    rows = [row for row in table if row[group] == g and row[y] is not None]
    xs = np.array(sorted({row[x] for row in rows}), dtype=float)
    out[g] = xs, np.array([np.mean([row[y] for row in rows if row[x] == v]) for v in xs])
  return out


def plot_isotropic_claim(table: Sequence[dict], directory: str) -> None:
  """step_size_vs_n.png (learned eta against eta*, and the off-diagonal mass) and risk_vs_n.png."""
  sigmas = sorted({row["noise_std"] for row in table})
  colors = dict(zip(sigmas, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  fig, (ax_eta, ax_off) = plt.subplots(1, 2, figsize=(11, 4.2))
  for sigma in sigmas:
    rows = [row for row in table if row["noise_std"] == sigma]
    ns = np.array([row["n"] for row in rows], dtype=float)
    ax_eta.scatter([r["n"] for r in rows], [r["learned_eta"] for r in rows], color=colors[sigma], s=18,
                   label=f"learned, sigma={sigma:g}")
    fine = np.geomspace(ns.min(), ns.max(), 200)
    d = rows[0]["d"]
    ax_eta.plot(fine, fine / (fine + d + 1 + sigma**2), color=colors[sigma], lw=1,
                label=f"eta* = n/(n+d+1+sigma^2), sigma={sigma:g}")
    ax_off.scatter([r["n"] for r in rows], [r["offdiag_mass"] for r in rows], color=colors[sigma], s=18,
                   label=f"sigma={sigma:g}")
  ax_eta.set(xscale="log", xlabel="context length n", ylabel="step size (mean diagonal of Gamma_eff)",
             title="Isotropic data: the layer is one GD step with eta*")
  ax_eta.legend(fontsize=7)
  ax_off.set(xscale="log", yscale="log", xlabel="context length n",
             ylabel="||offdiag(Gamma_eff)|| / ||Gamma_eff||", title="Off-diagonal mass (theory: 0)")
  ax_off.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "step_size_vs_n.png"))

  fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 4.2), squeeze=False)
  for ax, sigma in zip(axes[0], sigmas):
    rows = [row for row in table if row["noise_std"] == sigma]
    means = {key: _mean_by(rows, "noise_std", "n", key)[sigma]
             for key in ("optimal_risk", "one_step_gd_risk", "ridge_risk", "ols_risk")}
    ax.plot(*means["one_step_gd_risk"], color="k", lw=1.5, label="one-step GD at eta* (= R*)")
    ax.plot(*means["ridge_risk"], color="tab:green", lw=1, ls="--", label="ridge / Bayes")
    if means["ols_risk"][0].size:
      ax.plot(*means["ols_risk"], color="tab:red", lw=1, ls=":", marker=".", label="OLS (finite mean only)")
    ax.scatter([r["n"] for r in rows], [r["model_risk_mc"] for r in rows], color="tab:blue", s=18, zorder=3,
               label="trained layer (Monte Carlo)")
    ax.set(xscale="log", yscale="log", xlabel="context length n", ylabel="risk E[(y_hat - y)^2]",
           title=f"sigma = {sigma:g}")
    if sigma == 0:  # noiseless: ridge and OLS interpolate once n >= d, risk 0 (off a log axis)
      ax.set_ylim(bottom=0.1)
      ax.text(0.03, 0.03, "ridge and OLS: risk 0 for n >= d", transform=ax.transAxes, fontsize=7)
    ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "risk_vs_n.png"))


def plot_preconditioned_claim(table: Sequence[dict], directory: str) -> None:
  """preconditioner_vs_condition.png: Gamma_eff against its closed form, and plain GD's excess risk."""
  fig, (ax_err, ax_risk) = plt.subplots(1, 2, figsize=(11, 4.2))
  markers = {"inverse": "o", "identity": "s"}
  for cov_w in ("inverse", "identity"):
    rows = [row for row in table if row["cov_w"] == cov_w]
    if not rows:
      continue
    ax_err.scatter([r["condition"] for r in rows], [r["gamma_rel_error"] for r in rows], marker=markers[cov_w],
                   s=22, label=f"cov_w = {'cov_x^-1' if cov_w == 'inverse' else 'I'}: ||Gamma_eff - Gamma*|| / ||Gamma*||")
    if cov_w == "inverse":
      ax_err.scatter([r["condition"] for r in rows], [r["gamma_cov_x_rel_error"] for r in rows], marker="x", s=22,
                     label="cov_w = cov_x^-1: ||Gamma_eff cov_x - eta* I|| / ||eta* I||")
    ax_risk.scatter([r["condition"] for r in rows], [r["learned_excess"] for r in rows], marker=markers[cov_w],
                    s=22, label=f"trained layer, cov_w = {'cov_x^-1' if cov_w == 'inverse' else 'I'}")
    conditions, gd = _mean_by(rows, "cov_w", "condition", "plain_gd_excess")[cov_w]
    ax_risk.plot(conditions, gd, lw=1, marker=".",
                 label=f"best plain GD step, cov_w = {'cov_x^-1' if cov_w == 'inverse' else 'I'}")
  ax_err.set(xscale="log", yscale="log", xlabel="condition number of cov_x (rotated)",
             ylabel="relative Frobenius error", title="The layer against the preconditioned-GD optimum")
  ax_err.legend(fontsize=7)
  ax_risk.set(xscale="log", xlabel="condition number of cov_x (rotated)",
              ylabel="risk / R* - 1", title="Excess risk over R* (theory: 0 for the layer)")
  ax_risk.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "preconditioner_vs_condition.png"))


def plot_nonlinear_claim(table: Sequence[dict], directory: str) -> None:
  """nonlinear.png: learned step size against eta_f per response, and the risks beside the best linear one."""
  responses = list(dict.fromkeys(row["response"] for row in table))
  ns = sorted({row["n"] for row in table})
  fig, (ax_eta, ax_risk) = plt.subplots(1, 2, figsize=(12, 4.4))
  width = 0.8 / len(ns)
  for j, n in enumerate(ns):
    x = np.arange(len(responses)) + (j - (len(ns) - 1) / 2) * width
    eta_f = [np.mean([r["eta_f"] for r in table if r["response"] == resp and r["n"] == n]) for resp in responses]
    ax_eta.bar(x, eta_f, width * 0.9, color="lightgray", edgecolor="k", label="eta_f (Monte Carlo)" if j == 0 else None)
    for i, resp in enumerate(responses):
      learned = [r["learned_eta"] for r in table if r["response"] == resp and r["n"] == n]
      ax_eta.scatter([x[i]] * len(learned), learned, color=f"C{j}", zorder=3, s=20,
                     label=f"learned, n={n}" if i == 0 else None)
    for i, resp in enumerate(responses):
      rows = [r for r in table if r["response"] == resp and r["n"] == n]
      best = np.mean([r["best_linear_risk"] for r in rows])
      ax_risk.scatter([x[i]] * len(rows), [r["model_risk_mc"] / best - 1 for r in rows], color=f"C{j}", s=20,
                      zorder=3, label=f"trained layer, n={n}" if i == 0 else None)
      ax_risk.scatter([x[i]], [np.mean([r["one_step_gd_risk"] for r in rows]) / best - 1], marker="_", s=200,
                      color="k", label="one-step GD at eta_f" if i == 0 and j == 0 else None)
  ax_eta.set_xticks(range(len(responses)), responses)
  ax_eta.set(ylabel="step size (mean diagonal of Gamma_eff)", title="Nonlinear responses: still one GD step, eta_f")
  ax_eta.legend(fontsize=7)
  ax_risk.axhline(0, color="gray", lw=0.8)
  ax_risk.set_xticks(range(len(responses)), responses)
  ax_risk.set(ylabel="risk / best linear-predictor risk - 1",
              title="Risk over the best predictor of the form x_q^T Gamma g")
  ax_risk.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "nonlinear.png"))


def plot_depth_claim(table: Sequence[dict], gd_table: Sequence[dict], directory: str) -> None:
  """risk_vs_n.png (L-layer LSAs beside k-step GD and ridge) and depth_vs_gd.png (L layers against L GD steps)."""
  table = [row for row in table if row.get("model_risk_mc") is not None]  # diverged runs have no risk
  depths = sorted({row["num_layers"] for row in table})
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  for i, depth in enumerate(depths):
    ns, mean = _mean_by(table, "num_layers", "n", "model_risk_mc")[depth]
    rows = [r for r in table if r["num_layers"] == depth]
    ax.scatter([r["n"] for r in rows], [r["model_risk_mc"] for r in rows], color=f"C{i}", s=18, zorder=3)
    ax.plot(ns, mean, color=f"C{i}", lw=1.5, label=f"trained LSA, L={depth} (Monte Carlo)")
    steps, gd = _mean_by(gd_table, "steps", "n", "risk")[depth]
    ax.plot(steps, gd, color=f"C{i}", lw=1, ls="--", label=f"{depth}-step GD, best step size")
  ns, ridge = _mean_by(table, "num_layers", "n", "ridge_risk")[depths[0]]
  ax.plot(ns, ridge, color="k", lw=1.5, ls="-.", label="ridge / Bayes")
  ax.set(xscale="log", yscale="log", xlabel="context length n", ylabel="risk E[(y_hat - y)^2]",
         title="Depth: L LSA layers beside L steps of GD")
  ax.set_xticks(ns, [str(int(n)) for n in ns])
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "risk_vs_n.png"))

  fig, (ax_ratio, ax_mech) = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, depth in enumerate(depths):
    rows = [r for r in table if r["num_layers"] == depth]
    ns, ratio = _mean_by(rows, "num_layers", "n", "risk_over_gd_same_steps")[depth]
    ax_ratio.plot(ns, ratio, "o-", color=f"C{i}", label=f"L={depth}")
    for key, marker, label in (("prediction_gap_to_gd", "o", "gap to L-step GD (best step size)"),
                               ("unexplained_by_any_step_sizes", "s", "unexplained by L-step GD, any step sizes"),
                               ("unexplained_by_degree_2L_2", "^", "unexplained by a degree-(2L-2) polynomial")):
      ax_mech.scatter([depth + 0.04 * (np.log2(r["n"]) - 3.5) for r in rows], [r[key] for r in rows], marker=marker,
                      color={"o": "C0", "s": "C1", "^": "C2"}[marker], s=16, label=label if depth == depths[0] else None)
  ax_ratio.axhline(1.0, color="gray", lw=0.8)
  ax_ratio.set(xscale="log", xlabel="context length n", ylabel="LSA risk / L-step GD risk",
               title="L layers against L steps of GD (below 1: better than GD)")
  ax_ratio.legend(fontsize=7)
  ax_mech.set(yscale="log", xlabel="layers L (points spread by n)", ylabel="fraction of E[prediction^2]",
              title="Mechanism: the network's predictions against GD's")
  ax_mech.set_xticks(depths)
  ax_mech.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "depth_vs_gd.png"))


_OOD_MODEL_TITLES = {"one_layer": "one layer: softmax attention + MLP", "gpt": "3-layer, 2-head GPT-2-style"}


def _seed_errorbars(ax, rows: Sequence[dict], x: str, label: str, color: str, style: str = "o-") -> None:
  """Mean error over seeds with its standard error over seeds (absent for one seed)."""
  se = [r["error_se_seeds"] or 0.0 for r in rows]
  ax.errorbar([r[x] for r in rows], [r["error"] for r in rows], yerr=se, fmt=style, color=color, capsize=3,
              label=label)


def plot_ood_vs_s1(table: Sequence[dict], path: str, runs: Sequence[dict] = ()) -> None:
  """Out-of-domain error against S1, a panel per model, a line per alpha', majority vote dashed (claim 2).

  `runs` (rows with model, seed, alpha_test, s1, error), if given, adds each seed's curve as a thin line:
  a mean over seeds that learned different things hides it.
  """
  models = list(dict.fromkeys(r["model"] for r in table))
  alphas = sorted({r["alpha_test"] for r in table})
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.4), squeeze=False, layout="constrained")
  for ax, model in zip(axes[0], models):
    for j, alpha in enumerate(alphas):
      rows = sorted((r for r in table if r["model"] == model and r["alpha_test"] == alpha), key=lambda r: r["s1"])
      _seed_errorbars(ax, rows, "s1", f"ICL, $\\alpha'$ = {alpha:g}", f"C{j}")
      mine = [r for r in runs if r["model"] == model and r["alpha_test"] == alpha]
      for k, seed in enumerate(sorted({r["seed"] for r in mine})):
        curve = sorted((r for r in mine if r["seed"] == seed), key=lambda r: r["s1"])
        ax.plot([r["s1"] for r in curve], [r["error"] for r in curve], "-", color=f"C{j}", lw=0.7, alpha=0.45,
                label="single seeds" if j == 0 and k == 0 else None)
      ax.axhline(np.mean([r["majority_vote_error"] for r in rows]), color=f"C{j}", ls="--", lw=1,
                 label=f"majority vote, $\\alpha'$ = {alpha:g}")
    ax.axvline(1.0, color="gray", ls=":", lw=1, label="$S_1$ = 1 (the paper's threshold)")
    seeds = max(r["seeds"] for r in table if r["model"] == model)
    ax.set(xlabel="$S_1$ (coefficient sum of each out-of-domain relevant pattern)", ylabel="classification error",
           ylim=(-0.03, 1.03), title=f"{_OOD_MODEL_TITLES.get(model, model)} ({seeds} seeds, mean +- s.e.)")
    ax.legend(fontsize=7)
  _save(fig, path)


def plot_error_vs_alpha(table: Sequence[dict], path: str) -> None:
  """In-domain (training and unseen tasks) against out-of-domain error across alpha', a panel per model."""
  models = list(dict.fromkeys(r["model"] for r in table))
  names = {"train": "training tasks", "unseen": "unseen tasks (in domain)", "ood": "out of domain"}
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.4), squeeze=False, layout="constrained")
  for ax, model in zip(axes[0], models):
    for j, domain in enumerate(names):
      rows = sorted((r for r in table if r["model"] == model and r["domain"] == domain), key=lambda r: r["alpha_test"])
      s1 = f", $S_1$ = {rows[0]['s1']:g}" if domain == "ood" else ""
      _seed_errorbars(ax, rows, "alpha_test", f"ICL, {names[domain]}{s1}", f"C{j}")
    majority = sorted((r for r in table if r["model"] == model and r["domain"] == "unseen"),
                      key=lambda r: r["alpha_test"])
    ax.plot([r["alpha_test"] for r in majority], [r["majority_vote_error"] for r in majority], "k--", lw=1,
            label="majority vote")
    ax.set(xlabel="$\\alpha'$ (share of contexts with the query's pattern)", ylabel="classification error",
           ylim=(-0.03, 1.03), title=_OOD_MODEL_TITLES.get(model, model))
    ax.legend(fontsize=7)
  _save(fig, path)


# --- seed 001's claims on the classifier (scripts/classify_paper.py) ------------------------------------------------


_ERROR_FLOOR = 1e-5  # errors below this (and exact zeros) are drawn at it on log axes


def plot_prompt_length_claim(rows: Sequence[dict], needed: Sequence[dict], fits: Sequence[dict],
                             directory: str) -> None:
  """prompt_length.png: error against l per alpha' (ICL, ideal reader, majority vote); the l needed against 1/alpha'."""
  alphas = sorted({r["alpha_test"] for r in rows})
  fig, (ax_err, ax_need, ax_exact) = plt.subplots(1, 3, figsize=(17, 4.6))
  for color, alpha in zip(plt.cm.viridis(np.linspace(0, 0.85, len(alphas))), alphas):
    at = sorted((r for r in rows if r["alpha_test"] == alpha), key=lambda r: r["test_prompt_len"])
    lengths = [r["test_prompt_len"] for r in at]
    ax_err.plot(lengths, np.maximum([r["icl_error"] for r in at], _ERROR_FLOOR), "o", color=color, ms=4,
                label=f"ICL, $\\alpha'$ = {alpha:g}")
    ax_err.plot(lengths, np.maximum([r["ideal_error"] for r in at], _ERROR_FLOOR), "-", color=color, lw=1)
    ax_err.plot(lengths, np.maximum([r["majority_vote_error"] for r in at], _ERROR_FLOOR), ":", color=color, lw=1)
    ax_exact.plot(lengths, [r["exact_count_icl_error"] for r in at], "o-", color=color, ms=3,
                  label=f"ICL, $\\alpha'$ = {alpha:g}")
    ax_exact.plot(lengths, [r["exact_count_majority_vote_error"] for r in at], ":", color=color, lw=1)
  ax_err.plot([], [], "k-", lw=1, label="ideal reader: $(1-\\alpha')^l$")
  ax_err.plot([], [], "k:", lw=1, label="majority vote")
  ax_err.set(xscale="log", yscale="log", ylim=(_ERROR_FLOOR / 2, 1.5), xlabel="test prompt length l",
             ylabel=f"error (unseen tasks; < {_ERROR_FLOOR:g} drawn at it)",
             title="Each context shares the query's pattern w.p. $\\alpha'$")
  ax_err.legend(fontsize=7)

  markers = dict(zip(sorted({r["target_error"] for r in needed}), "os^D"))
  for (target, marker), color in zip(markers.items(), ("C0", "C3", "C2", "C4")):
    at = [r for r in needed if r["target_error"] == target and r["icl_length_needed"] is not None
          and np.isfinite(r["icl_length_needed"])]
    fit = next(f for f in fits if f["target_error"] == target)
    open_ = [r for r in at if r["icl_censored"]]
    closed = [r for r in at if not r["icl_censored"]]
    ax_need.plot([r["inverse_alpha"] for r in closed], [r["icl_length_needed"] for r in closed], marker,
                 color=color, label=f"ICL, error {target:g}" + (f": slope {fit['icl_slope']:.2f}"
                                                               if fit["icl_slope"] is not None else ""))
    ax_need.plot([r["inverse_alpha"] for r in open_], [r["icl_length_needed"] for r in open_], marker, color=color,
                 mfc="none", label="already at l = 1 (not fitted)" if open_ else None)
    ideal = [r for r in needed if r["target_error"] == target and r["alpha_test"] < 1]
    ax_need.plot([r["inverse_alpha"] for r in ideal], [r["ideal_length_needed"] for r in ideal], "-", color=color,
                 lw=1, label=f"ideal reader, error {target:g}: slope {fit['ideal_slope_alpha_below_1']:.2f}")
    if fit["icl_slope"] is not None and len(closed) >= 2:
      x = np.array([r["inverse_alpha"] for r in closed])
      y = np.array([r["icl_length_needed"] for r in closed])
      intercept = np.mean(np.log(y) - fit["icl_slope"] * np.log(x))
      grid = np.geomspace(x.min(), x.max(), 20)
      ax_need.plot(grid, np.exp(intercept) * grid ** fit["icl_slope"], "--", color=color, lw=0.8)
  ax_need.set(xscale="log", yscale="log", xlabel="$1/\\alpha'$", ylabel="prompt length needed for the error",
              title="Length needed against $1/\\alpha'$ (claim: slope ~1)")
  ax_need.legend(fontsize=7)

  ax_exact.plot([], [], "k:", lw=1, label="majority vote")
  ax_exact.set(xscale="log", ylim=(-0.03, 1.03), xlabel="test prompt length l", ylabel="error (unseen tasks)",
               title="The sampler's exact count round($\\alpha'$ l) $\\geq$ 1")
  ax_exact.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "prompt_length.png"))


def plot_mechanism_claim(rows: Sequence[dict], neurons: Sequence[dict], alpha: float, largest: int,
                         directory: str) -> None:
  """attention_over_training.png, qk_norms.png and neurons.png from the mechanism claim's table."""
  steps = [r["step"] for r in rows]
  fig, (ax_mass, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
  for domain, color in (("train", "C0"), ("unseen", "C1")):
    ax_mass.plot(steps, [r[f"{domain}_attention_same"] for r in rows], "o-", ms=3, color=color,
                 label=f"{domain} tasks")
    ax_err.plot(steps, [r[f"{domain}_error"] for r in rows], "o-", ms=3, color=color, label=f"ICL, {domain} tasks")
  ax_mass.axhline(alpha, color="gray", ls=":", label=f"uniform attention ($\\alpha$ = {alpha:g})")
  ax_mass.axhline(1.0, color="k", ls="--", lw=0.8, label="all attention on the query's pattern")
  ax_mass.set(xlabel="training step", ylabel="attention on same-pattern contexts", ylim=(0, 1.05),
              title=f"Attention concentrates on the query's pattern ($\\alpha'$ = {alpha:g})")
  ax_mass.legend(fontsize=7)
  ax_err.axhline(0.5, color="gray", ls=":", label="majority vote (a tie at $\\alpha'$ = 1/2)")
  ax_err.set(xlabel="training step", ylabel="classification error", ylim=(-0.02, 0.6), title="Error during training")
  ax_err.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "attention_over_training.png"))

  fig, (ax_norm, ax_score) = plt.subplots(1, 2, figsize=(11, 4.2))
  for domain, style in (("train", "-"), ("unseen", "--")):
    ax_norm.plot(steps, [r[f"{domain}_key_norm_same"] for r in rows], style, color="C0",
                 label=f"|W_K p_i|, same pattern ({domain})")
    ax_norm.plot(steps, [r[f"{domain}_key_norm_other"] for r in rows], style, color="C3",
                 label=f"|W_K p_i|, other pattern ({domain})")
    ax_score.plot(steps, [r[f"{domain}_score_same"] for r in rows], style, color="C0", label=f"same pattern ({domain})")
    ax_score.plot(steps, [r[f"{domain}_score_other"] for r in rows], style, color="C3",
                  label=f"other pattern ({domain})")
  ax_norm.plot(steps, [r["train_query_norm"] for r in rows], "-", color="k", label="|W_Q p_query| (train)")
  ax_norm.set(xlabel="training step", ylabel="norm (mean over prompts)", title="Query and key norms")
  ax_norm.legend(fontsize=7)
  ax_score.set(xlabel="training step", ylabel="$(W_K p_i)^T W_Q p_{query}$ (mean)", title="Attention scores")
  ax_score.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "qk_norms.png"))

  fig, (ax_mag, ax_cos, ax_time) = plt.subplots(1, 3, figsize=(16, 4.4))
  order = sorted(neurons, key=lambda n: -n["magnitude"])
  colors = ["C0" if n["sign"] > 0 else "C3" for n in order]
  ax_mag.bar(range(len(order)), [n["magnitude"] for n in order], color=colors)
  ax_mag.bar([0], [0], color="C0", label="$a_i > 0$")
  ax_mag.bar([0], [0], color="C3", label="$a_i < 0$")
  ax_mag.set(xlabel="neuron (sorted by magnitude)", ylabel="|row of $W_O W_V$|", title="Neuron magnitudes (final)")
  ax_mag.legend(fontsize=7)
  for sign, color, label in ((1, "C0", "$a_i > 0$"), (-1, "C3", "$a_i < 0$")):
    group = [n for n in neurons if n["sign"] == sign]
    top = [n for n in group if n["largest_of_its_sign"]]
    ax_cos.scatter([n["cos_mean_idr"] for n in group], [n["cos_q"] for n in group],
                   s=[6 * n["magnitude"] for n in group], facecolors="none", edgecolors=color, label=f"{label}, all")
    ax_cos.scatter([n["cos_mean_idr"] for n in top], [n["cos_q"] for n in top], s=[6 * n["magnitude"] for n in top],
                   color=color, label=f"{label}, the {largest} largest")
  ax_cos.axhline(1, color="gray", lw=0.6)
  ax_cos.axhline(-1, color="gray", lw=0.6)
  ax_cos.axvline(1, color="gray", lw=0.6)
  ax_cos.set(xlim=(-1.05, 1.05), ylim=(-1.1, 1.1), xlabel="cos(first $d_X$ entries, mean IDR pattern)",
             ylabel="cos(last $d_Y$ entries, q)", title="Neuron directions (final; area ~ magnitude)")
  ax_cos.legend(fontsize=7)
  for sign, color in (("positive", "C0"), ("negative", "C3")):
    ax_time.plot(steps, [r[f"{sign}_cos_idr"] for r in rows], "-", color=color,
                 label=f"{sign} $a_i$: cos with mean IDR")
    ax_time.plot(steps, [r[f"{sign}_cos_q"] for r in rows], "--", color=color, label=f"{sign} $a_i$: cos with q")
  ax_time.axhline(0, color="gray", lw=0.6)
  ax_time.set(xlabel="training step", ylabel="mean cosine", ylim=(-1.05, 1.05),
              title=f"The {largest} largest neurons of each sign, over training")
  ax_time.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "neurons.png"))


def plot_pruning_claim(rows: Sequence[dict], row_norms: Sequence[float], signs: Sequence[float],
                       directory: str) -> None:
  """pruning.png: per alpha', error and mean margin y F(P) against the pruning rate per strategy;
  row_magnitudes.png: the histogram of |W_O[i]|."""
  alphas = sorted({r["alpha_test"] for r in rows}, reverse=True)
  fig, axes = plt.subplots(2, len(alphas), figsize=(5.8 * len(alphas), 8), squeeze=False)
  rates = sorted({r["rate"] for r in rows})
  for column, alpha in enumerate(alphas):
    ax_err, ax_margin = axes[0, column], axes[1, column]
    at = [r for r in rows if r["alpha_test"] == alpha]
    for strategy, color, marker in (("smallest", "C0", "o"), ("random", "C1", "s"), ("largest", "C3", "^")):
      for ax, key in ((ax_err, "error"), (ax_margin, "mean_margin")):
        by_rate = [[r[key] for r in at if r["strategy"] == strategy and r["rate"] == rate] for rate in rates]
        ax.plot(rates, [np.mean(v) for v in by_rate], marker + "-", color=color, ms=4,
                label=f"{strategy} first" if strategy != "random" else f"random (mean of {len(by_rate[0])} draws)")
        if strategy == "random":
          ax.fill_between(rates, [min(v) for v in by_rate], [max(v) for v in by_rate], color=color, alpha=0.2,
                          label="random: min-max over draws")
    ax_err.axhline(at[0]["majority_vote_error"], color="gray", ls=":", label="majority vote")
    ax_err.axhline(0.5, color="k", ls="--", lw=0.8, label="chance (every neuron off: F = 0)")
    ax_err.set(xlabel="pruning rate R (fraction of rows of $W_O$ zeroed)", ylabel="error (unseen tasks)",
               ylim=(-0.02, 1.02), title=f"Pruning the neurons of $W_O$, $\\alpha'$ = {alpha:g}, l = "
               f"{at[0]['test_prompt_len']}")
    ax_err.legend(fontsize=7)
    ax_margin.axhline(0, color="gray", lw=0.6)
    ax_margin.set(xlabel="pruning rate R", ylabel="mean margin y F(P)", title=f"Margin, $\\alpha'$ = {alpha:g}")
    ax_margin.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "pruning.png"))

  fig, ax = plt.subplots(figsize=(6.2, 4.2))
  norms, signs = np.asarray(row_norms), np.asarray(signs)
  bins = np.linspace(0, norms.max() * 1.02, 21)
  ax.hist([norms[signs > 0], norms[signs < 0]], bins=bins, stacked=True, color=["C0", "C3"],
          label=["$a_i > 0$", "$a_i < 0$"])
  ax.set(xlabel="|row of $W_O$|", ylabel="neurons", title=f"Row magnitudes of the trained $W_O$ (m = {norms.size})")
  ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "row_magnitudes.png"))


_CLASSICAL_STYLES = {"icl": ("ICL (trained transformer)", "k", "o", "-", 2.0),
                     "logistic_regression": ("logistic regression", "C0", "s", "-", 1.0),
                     "svm_rbf": ("SVM, Gaussian kernel", "C1", "^", "-", 1.0),
                     "svm_linear": ("SVM, linear kernel", "C2", "v", "-", 1.0),
                     "1nn": ("1-NN", "C3", "D", "-", 1.0),
                     "3nn": ("3-NN", "C4", "x", "-", 1.0),
                     "majority_vote": ("majority vote", "gray", "", ":", 1.0)}


def plot_classical_claim(rows: Sequence[dict], directory: str) -> None:
  """classical.png: per sampling and alpha', the error of ICL and of each classifier fit on the prompt, against l."""
  samplings = list(dict.fromkeys(r["sampling"] for r in rows))
  alphas = sorted({r["alpha_test"] for r in rows}, reverse=True)
  titles = {"exact": "exact count round($\\alpha'$ l) $\\geq$ 1", "binomial": "each context w.p. $\\alpha'$"}
  fig, axes = plt.subplots(len(samplings), len(alphas), figsize=(5.6 * len(alphas), 4.2 * len(samplings)),
                           squeeze=False)
  lengths = sorted({r["test_prompt_len"] for r in rows})
  for row_axes, sampling in zip(axes, samplings):
    for ax, alpha in zip(row_axes, alphas):
      for method, (label, color, marker, style, width) in _CLASSICAL_STYLES.items():
        at = sorted((r for r in rows if r["sampling"] == sampling and r["alpha_test"] == alpha
                     and r["method"] == method), key=lambda r: r["test_prompt_len"])
        if at:
          ax.errorbar([r["test_prompt_len"] for r in at], [r["error"] for r in at],
                      yerr=[r["error_stderr"] for r in at], fmt=marker + style if marker else style, color=color,
                      lw=width, ms=4, capsize=2, label=label)
      ax.set_xscale("log")
      ax.set_xticks(lengths, [str(n) for n in lengths])
      ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
      ax.set(xlabel="test prompt length l", ylabel="error (unseen tasks)", ylim=(-0.02, 0.62),
             title=f"$\\alpha'$ = {alpha:g}, {titles.get(sampling, sampling)}")
      ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, os.path.join(directory, "classical.png"))
