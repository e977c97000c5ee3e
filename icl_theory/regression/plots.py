"""Figures of the regression experiment: a run, a sweep, and the LSA paper's claims (scripts/lsa_paper.py)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import matplotlib.ticker
import numpy as np

from icl_theory.engine.plotting import heatmap as _heatmap
from icl_theory.engine.plotting import plt
from icl_theory.engine.plotting import save as _save


def plot_lsa_run(summary: dict[str, Any], history: Sequence[dict], path: str) -> None:
  """Gamma_eff beside Gamma* (when the LSA has one layer) and the training loss against R*."""
  gamma_star = np.asarray(summary["optimal_gamma"])
  has_gamma = summary.get("effective_gamma") is not None
  # Fixed margins: a constrained layout draws the figure twice, a third of every run's figure time.
  fig, axes = plt.subplots(1, 3 if has_gamma else 1, figsize=(15 if has_gamma else 5, 4))
  fig.subplots_adjust(left=0.04 if has_gamma else 0.16, right=0.98 if has_gamma else 0.96, bottom=0.12, top=0.92,
                      wspace=0.25)
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
  if summary.get("multi_step_gd_risk") is None:
    ax.axhline(summary["optimal_risk"], color="k", ls="--", label=f"$R^*$ = {summary['optimal_risk']:.4f}")
    ax.axhline(summary["one_step_gd_risk"], color="C2", ls=":",
               label=f"best plain GD = {summary['one_step_gd_risk']:.4f}")
  else:  # L layers against L steps of GD (the one-layer R* is no bound for them) and ridge
    steps = summary["config"]["num_layers"]
    ax.axhline(summary["multi_step_gd_risk"], color="k", ls="--",
               label=f"{steps}-step GD, best step = {summary['multi_step_gd_risk']:.4g}")
    ax.axhline(summary["model_risk_mc"], color="C1", ls="-.",
               label=f"model (fresh prompts) = {summary['model_risk_mc']:.3g}")
    # Noiseless data with n >= d: ridge is exact (float32 rounding, ~1e-7), off any useful log axis.
    if summary["ridge_risk"] > 0.01 * min(summary["model_risk_mc"], summary["multi_step_gd_risk"]):
      ax.axhline(summary["ridge_risk"], color="C2", ls=":", label=f"ridge / Bayes = {summary['ridge_risk']:.4g}")
  ax.set_yscale("log")
  if summary.get("multi_step_gd_risk") is None:  # a decade or two: label the in-between values too
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("step")
  ax.set_ylabel("squared error")
  ax.set_title("loss against the optimal risk" if summary.get("multi_step_gd_risk") is None
               else f"loss against {summary['config']['num_layers']}-step GD")
  ax.legend(fontsize=8)
  _save(fig, path)


_BASELINES = (("optimal_risk", "$R^*$ (preconditioned GD, $\\Gamma^*$)", "k", "--"),
              ("one_step_gd_risk", "one-step GD, best $\\eta$", "C2", ":"),
              ("ridge_risk", "ridge / Bayes", "C3", "-."),
              ("ols_risk", "OLS", "C4", (0, (1, 3))))


def _plain_log_ticks(axis) -> None:
  """Tick labels of a log axis as plain numbers (0.5, 2, 20), not 5x10^-1."""
  def label(value: float, _) -> str:
    low, high = sorted(axis.get_view_interval())
    mantissa = round(value / 10 ** np.floor(np.log10(value)), 6)
    # A narrow axis (under a factor 5) labels every tick, a wide one only 1, 2 and 5 of each decade.
    return f"{value:.3g}" if high / max(low, 1e-30) < 5 or mantissa in (1.0, 2.0, 5.0) else ""
  axis.set_major_formatter(matplotlib.ticker.FuncFormatter(label))
  axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(label))


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
    _plain_log_ticks(ax.yaxis)
    if all(float(r["noise_std"]) == 0 for r in settings[name]):
      ax.text(0.02, 0.02, "noiseless: ridge and OLS are exact (risk 0,\noff the axis) where n >= d", fontsize=7,
              transform=ax.transAxes, va="bottom")
    ax.set_xlabel("prompt length n")
    ax.set_ylabel("risk")
    ax.set_title(name, fontsize=9)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  # One legend for every panel (they share their lines), below them.
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=8)
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
    _plain_log_ticks(ax.yaxis)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("index (largest first)")
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
  fig, ax = plt.subplots(figsize=(1.2 * len(ns) + 4.5, 0.6 * len(names) + 1.6), layout="constrained")
  image = ax.imshow(table, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(ns)), [str(n) for n in ns])
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.set_xlabel("prompt length n")
  for (i, j), value in np.ndenumerate(table):
    if np.isfinite(value):
      ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w" if value < np.nanmax(table) / 2 else "k",
              fontsize=8)
  colorbar = fig.colorbar(image, ax=ax)
  colorbar.set_label("gamma_rel_error\n(mean over seeds)", fontsize=9)
  _save(fig, f"{directory}/gamma_rel_error.png")



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
  for cov_w in ("inverse", "identity"):  # plain SGD (the default), filled; the risk panel shows these
    rows = [row for row in table if row["cov_w"] == cov_w and row.get("training", "plain") == "plain"]
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
  for cov_w in ("inverse", "identity"):  # the curvature-preconditioned runs, hollow
    rows = [row for row in table if row["cov_w"] == cov_w and row.get("training") == "curvature"]
    if rows:
      ax_err.scatter([r["condition"] for r in rows], [r["gamma_rel_error"] for r in rows], marker=markers[cov_w],
                     s=40, facecolors="none", edgecolors="k",
                     label=f"cov_w = {'cov_x^-1' if cov_w == 'inverse' else 'I'}, preconditioner='curvature' (4000 steps)")
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
