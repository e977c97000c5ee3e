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
                "s1": "$S_1$", "test_prompt_len": "test l", "ood_construction": "ODR"}
# Evaluation fields that are never an x axis but, when they vary, split the panels (a categorical axis).
SWEEP_PANEL_FIELDS = ("ood_construction",)
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
  alpha, model, prompt_len values that differ), its hinge loss dashed, majority vote
  black dashed; a row of panels per combination of the other varying evaluation fields
  (ood_construction included). training.png: the final
  training loss of each training point (mean +- s.e. over seeds, each seed a dot).
  """
  finished = [r for r in rows if r.get("status") == "finished"]
  training = _varying(rows, SWEEP_TRAINING_FIELDS)
  evaluation = _varying(rows, tuple(SWEEP_EVALUATION_FIELDS))
  panels = _varying(rows, SWEEP_PANEL_FIELDS)
  points = sorted({tuple(r.get(f) for f in training) for r in rows}, key=repr)
  label = lambda point: _describe(dict(zip(training, point))) or "trained model"
  for field in evaluation:
    _plot_error_vs(finished, field, [f for f in evaluation if f != field] + panels, training, points, label,
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
        hinge = [[r[f"{prefix}_hinge"] for r in mine if r[field] == x and r.get(f"{prefix}_hinge") is not None]
                 for x in xs]
        if any(hinge):  # rows written before the hinge loss was reported lack it
          kept = [i for i, v in enumerate(hinge) if v]
          ax.plot([xs[i] for i in kept], [np.mean(hinge[i]) for i in kept], "--", color=f"C{j}", lw=1,
                  label="its hinge loss" if j == 0 else None)
      votes = [[r[f"{prefix}_majority_vote_error"] for r in here
                if r[field] == x and r.get(f"{prefix}_majority_vote_error") is not None] for x in xs]
      keep = [i for i, v in enumerate(votes) if v]
      ax.plot([xs[i] for i in keep], [np.mean(votes[i]) for i in keep], "k--", lw=1, label="majority vote")
      if field == "test_prompt_len":
        _integer_axis(ax, xs)
      elif len(xs) <= 8:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
      fixed = _describe(dict(zip(others, setting)))
      ax.set(xlabel=SWEEP_EVALUATION_FIELDS[field], ylabel="error (solid), hinge loss (dashed)", ylim=(-0.03, None),
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


# --- seed 001's mechanism claim (scripts/classify_paper.py); the other claims' figures: claim_plots.py -----------


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
