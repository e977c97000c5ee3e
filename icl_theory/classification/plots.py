"""Figures of the classification experiment: a run, and the claims of scripts/classify_*.py."""

from __future__ import annotations

import os
from typing import Any, Sequence

import matplotlib.ticker
import numpy as np

from icl_theory.engine.plotting import plt
from icl_theory.engine.plotting import save as _save


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
                  fmt="o-", color=color, capsize=3, label=f"ICL error, {label}")
      if all(f"{prefix}_hinge" in r for r in rows):  # summaries written before the hinge loss was reported lack it
        ax.plot(xs, [r[f"{prefix}_hinge"] for r in rows], "s--", color=color, ms=3, label=f"hinge loss, {label}")
    ax.plot(xs, [r["unseen_task_majority_vote_error"] for r in rows], "k:", label="majority vote error")
    ax.set_ylim(bottom=-0.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("classification error (solid), hinge loss (dashed)")
    ax.set_title(f"error {title}")
    ax.legend(fontsize=8)
  ax_len.set_xscale("log")
  lengths = [r["test_prompt_len"] for r in summary["error_by_test_prompt_len"]]
  ax_len.set_xticks(lengths, [str(n) for n in lengths])
  ax_len.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  _save(fig, path)


# --- a sweep (icl_theory.engine.sweep over Classification; icl_theory/configs/classify_sweep.py) --------------------


# The run fields of Classification's training axes, and of its evaluation axes with their axis labels.
SWEEP_TRAINING_FIELDS = ("alpha", "model", "prompt_len")
SWEEP_EVALUATION_FIELDS = {"alpha_test": "$\\alpha'$ (share of test contexts with the query's pattern)",
                           "s1": "$S_1$ (coefficient sum of each out-of-domain relevant pattern)",
                           "test_prompt_len": "test prompt length"}
_SWEEP_SHORT = {"alpha": "$\\alpha$", "model": "model", "prompt_len": "l", "alpha_test": "$\\alpha'$",
                "s1": "$S_1$", "test_prompt_len": "test l"}
_SWEEP_DOMAINS = (("unseen_task", "unseen tasks (in domain)"), ("ood", "out of domain"))


def _varying(rows: Sequence[dict], fields: Sequence[str]) -> list[str]:
  """The fields among `fields` that take more than one value among the rows (in `fields`' order)."""
  return [f for f in fields if len({repr(r.get(f)) for r in rows if r.get(f) is not None}) > 1]


def _values(rows: Sequence[dict], field: str) -> list:
  return sorted({r[field] for r in rows if r.get(field) is not None}, key=lambda v: (isinstance(v, str), v))


def _describe(values: dict[str, Any]) -> str:
  return ", ".join(f"{_SWEEP_SHORT[f]} = {v:g}" if isinstance(v, float) else f"{_SWEEP_SHORT[f]} = {v}"
                   for f, v in values.items())


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
  """The mean over seeds and its standard error over seeds (0 for one seed)."""
  values = np.asarray(values, np.float64)
  se = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0
  return float(values.mean()), float(se)


def _integer_axis(ax, values: Sequence[float]) -> None:
  """An x axis of integers: ticks at the values only (log-spaced when they span a factor of 8 or more)."""
  if min(values) > 0 and max(values) >= 8 * min(values):
    ax.set_xscale("log")
  ax.set_xticks(list(values), [str(int(v)) for v in values])
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plot_sweep(rows: Sequence[dict], directory: str) -> None:
  """A classification sweep's figures (rows of `icl_theory.engine.sweep.sweep`: grid coordinates and metrics).

  error_vs_<field>.png for each evaluation field (alpha_test, s1, test_prompt_len) with
  more than one value among the rows: the unseen-task and out-of-domain error against
  it, mean over seeds +- standard error over seeds, one line per training point (the
  alpha, model, prompt_len values that differ), majority vote dashed; a row of panels
  per combination of the other varying evaluation fields. training.png: the final
  training loss of each training point (mean +- s.e. over seeds, each seed a dot).
  """
  finished = [r for r in rows if r.get("status") == "finished"]
  training = _varying(rows, SWEEP_TRAINING_FIELDS)
  evaluation = _varying(rows, tuple(SWEEP_EVALUATION_FIELDS))
  points = sorted({tuple(r.get(f) for f in training) for r in rows}, key=repr)
  label = lambda point: _describe(dict(zip(training, point))) or "trained model"
  for field in evaluation:
    _plot_error_vs(finished, field, [f for f in evaluation if f != field], training, points, label,
                   os.path.join(directory, f"error_vs_{field}.png"))
  _plot_training(rows, training, points, label, os.path.join(directory, "training.png"))


def _plot_error_vs(rows: Sequence[dict], field: str, others: Sequence[str], training: Sequence[str],
                   points: Sequence[tuple], label, path: str) -> None:
  settings = sorted({tuple(r.get(f) for f in others) for r in rows}, key=repr) or [()]
  xs = _values(rows, field)
  fig, axes = plt.subplots(len(settings), len(_SWEEP_DOMAINS), figsize=(12, 3.8 * len(settings)), squeeze=False,
                           layout="constrained")
  seeds = len({r.get("seed") for r in rows})
  for panel_row, setting in zip(axes, settings):
    here = [r for r in rows if tuple(r.get(f) for f in others) == setting]
    for ax, (prefix, domain) in zip(panel_row, _SWEEP_DOMAINS):
      for j, point in enumerate(points):
        mine = [r for r in here if tuple(r.get(f) for f in training) == point]
        at = [[r[f"{prefix}_error"] for r in mine if r[field] == x and r.get(f"{prefix}_error") is not None]
              for x in xs]
        keep = [i for i, v in enumerate(at) if v]
        stats = [_mean_se(at[i]) for i in keep]
        ax.errorbar([xs[i] for i in keep], [m for m, _ in stats], yerr=[s for _, s in stats], fmt="o-",
                    color=f"C{j}", ms=4, capsize=3, label=f"ICL, {label(point)}")
      votes = [[r[f"{prefix}_majority_vote_error"] for r in here
                if r[field] == x and r.get(f"{prefix}_majority_vote_error") is not None] for x in xs]
      keep = [i for i, v in enumerate(votes) if v]
      ax.plot([xs[i] for i in keep], [np.mean(votes[i]) for i in keep], "k--", lw=1, label="majority vote")
      if field == "test_prompt_len":
        _integer_axis(ax, xs)
      elif len(xs) <= 8:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
      fixed = _describe(dict(zip(others, setting)))
      ax.set(xlabel=SWEEP_EVALUATION_FIELDS[field], ylabel="classification error", ylim=(-0.03, 1.03),
             title=f"{domain}" + (f", {fixed}" if fixed else "")
             + f" ({seeds} seed{'s' if seeds > 1 else ''}" + (", mean +- s.e.)" if seeds > 1 else ")"))
      ax.legend(fontsize=7)
  _save(fig, path)


def _plot_training(rows: Sequence[dict], training: Sequence[str], points: Sequence[tuple], label,
                   path: str) -> None:
  runs: dict[tuple, dict] = {}  # (training point, seed) -> row: the rows repeat a run per evaluation point
  for r in rows:
    runs.setdefault((tuple(r.get(f) for f in training), r.get("seed")), r)
  fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(points) + 2), 4.2), layout="constrained")
  for j, point in enumerate(points):
    mine = [r for (p, _), r in runs.items() if p == point]
    losses = [r["final_train_loss"] for r in mine if r.get("final_train_loss") is not None]
    if losses:
      mean, se = _mean_se(losses)
      ax.bar(j, mean, yerr=se if len(losses) > 1 else None, color=f"C{j}", alpha=0.6, capsize=4)
      ax.plot([j] * len(losses), losses, "k.", ms=5, label="one seed" if j == 0 else None)
      ax.annotate(f"{mean:.3g}", (j, mean + se), xytext=(0, 3), textcoords="offset points", ha="center",
                  va="bottom", fontsize=8)
    failed = len(mine) - len(losses)
    if failed:
      ax.annotate(f"{failed} diverged", (j, 0), ha="center", va="bottom", fontsize=8, color="C3")
  ax.set_xticks(range(len(points)), [label(p) for p in points], rotation=20 if len(points) > 3 else 0, ha="right"
                if len(points) > 3 else "center")
  ax.set_xlim(-0.6, len(points) - 0.4)
  ax.set(xlabel="training point", ylabel="final training loss (hinge, batch mean)",
         title="Final training loss (bar: mean over seeds" + (" +- s.e." if len(runs) > len(points) else "") + ")")
  ax.set_ylim(bottom=0)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  _save(fig, path)


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
