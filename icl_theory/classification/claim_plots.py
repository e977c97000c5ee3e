"""Figures of seed 001's claims (scripts/classify_ood.py, scripts/classify_paper.py): every error with its hinge loss.

Each function takes the rows a script writes to CSV (dicts) and draws the error
as solid lines and the hinge loss max(0, 1 - y F(P)) as dashed lines of the same
colour: the theorems bound the hinge loss, which keeps moving where the error is
already 0 (every margin positive) or still 1 (every margin negative).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from icl_theory.engine.plotting import plt
from icl_theory.engine.plotting import save as _save

_MODEL_TITLES = {"one_layer": "one layer (softmax attention + MLP)", "gpt": "GPT-2-style, 3 layers x 2 heads"}


def _sorted(rows: Sequence[dict], key: str) -> list[dict]:
  return sorted(rows, key=lambda r: r[key])


def _panels(keys: Sequence[Any], width: float = 5.0, height: float = 3.8):
  columns = min(len(keys), 3)
  rows = -(-len(keys) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False,
                           layout="constrained")
  for ax in axes.flat[len(keys):]:
    ax.set_visible(False)
  return fig, list(axes.flat)


def plot_ood_vs_s1(table: Sequence[dict], path: str) -> None:
  """Out-of-domain error (solid) and hinge loss (dashed) against S1: a panel per model, training alpha and
  construction; a colour per alpha'; majority vote dotted (claim 2)."""
  keys = list(dict.fromkeys((r["model"], r["train_alpha"], r["ood_construction"]) for r in table))
  fig, axes = _panels(keys)
  for ax, (model, train_alpha, construction) in zip(axes, keys):
    mine = [r for r in table if (r["model"], r["train_alpha"], r["ood_construction"]) == (model, train_alpha,
                                                                                            construction)]
    for j, alpha in enumerate(sorted({r["alpha_test"] for r in mine})):
      curve = _sorted([r for r in mine if r["alpha_test"] == alpha], "s1")
      s1 = [r["s1"] for r in curve]
      ax.errorbar(s1, [r["error"] for r in curve], yerr=[r["error_se_seeds"] or 0.0 for r in curve], fmt="o-",
                  color=f"C{j}", capsize=2, ms=3, label=f"error, $\\alpha'$ = {alpha:g}")
      ax.plot(s1, [r["hinge"] for r in curve], "s--", color=f"C{j}", ms=2, lw=1, label="hinge loss")
      ax.axhline(curve[0]["majority_vote_error"], color=f"C{j}", ls=":", lw=1)
    ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.set(xlabel="$S_1$", ylabel="error (solid), hinge (dashed)", ylim=(-0.03, None),
           title=f"{_MODEL_TITLES.get(model, model)}\ntrained at $\\alpha$ = {train_alpha:g}; ODR: {construction}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6, ncol=2)
  _save(fig, path)


def plot_error_vs_alpha(table: Sequence[dict], path: str) -> None:
  """Training tasks, unseen tasks and out of domain (each construction, S1 = 1) against alpha': error solid,
  hinge loss dashed, a panel per model and training alpha."""
  keys = list(dict.fromkeys((r["model"], r["train_alpha"]) for r in table))
  fig, axes = _panels(keys)
  for ax, (model, train_alpha) in zip(axes, keys):
    mine = [r for r in table if (r["model"], r["train_alpha"]) == (model, train_alpha)]
    lines = list(dict.fromkeys((r["domain"], r["ood_construction"]) for r in mine))
    for j, (domain, construction) in enumerate(lines):
      curve = _sorted([r for r in mine if (r["domain"], r["ood_construction"]) == (domain, construction)],
                      "alpha_test")
      label = domain if construction is None else f"ood, {construction}"
      x = [r["alpha_test"] for r in curve]
      ax.plot(x, [r["error"] for r in curve], "o-", color=f"C{j}", ms=3, label=label)
      ax.plot(x, [r["hinge"] for r in curve], "--", color=f"C{j}", lw=1)
    majority = _sorted([r for r in mine if r["domain"] == "unseen"], "alpha_test")
    ax.plot([r["alpha_test"] for r in majority], [r["majority_vote_error"] for r in majority], "k:", label="majority")
    ax.set(xlabel="$\\alpha'$", ylabel="error (solid), hinge (dashed)", ylim=(-0.03, None),
           title=f"{_MODEL_TITLES.get(model, model)}, trained at $\\alpha$ = {train_alpha:g}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
  _save(fig, path)


def plot_prompt_length(rows: Sequence[dict], needed: Sequence[dict], fits: Sequence[dict], path: str) -> None:
  """Per training alpha: unseen-task error and hinge loss against l (a colour per alpha'), and the smallest l
  reaching the target error / hinge loss against 1/alpha' with the fitted slope and the line l = 1/alpha'."""
  train_alphas = sorted({r["train_alpha"] for r in rows})
  fig, axes = plt.subplots(2, len(train_alphas), figsize=(6 * len(train_alphas), 8.4), squeeze=False,
                           layout="constrained")
  for column, train_alpha in enumerate(train_alphas):
    ax, ax_need = axes[0, column], axes[1, column]
    mine = [r for r in rows if r["train_alpha"] == train_alpha]
    alphas = sorted({r["alpha_test"] for r in mine})
    for color, alpha in zip(plt.cm.viridis(np.linspace(0, 0.9, len(alphas))), alphas):
      curve = _sorted([r for r in mine if r["alpha_test"] == alpha], "test_prompt_len")
      lengths = [r["test_prompt_len"] for r in curve]
      ax.plot(lengths, [r["unseen_task_error"] for r in curve], "o-", color=color, ms=2, lw=1,
              label=f"$\\alpha'$ = {alpha:g}")
      ax.plot(lengths, [r["unseen_task_hinge"] for r in curve], "--", color=color, lw=0.8)
    ax.set(xscale="log", xlabel="test prompt length l", ylabel="unseen tasks: error (solid), hinge (dashed)",
           title=f"trained at $\\alpha$ = {train_alpha:g}; floor($\\alpha'$ l) contexts on the query's pattern")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6, ncol=2)
    for j, figure in enumerate(("error", "hinge")):
      reached = [r for r in needed if r["train_alpha"] == train_alpha and r["figure"] == figure
                 and r["length_needed"] is not None]
      fit = next(f for f in fits if f["train_alpha"] == train_alpha and f["figure"] == figure)
      slope = "" if fit["slope"] is None else f", slope {fit['slope']:.2f}"
      ax_need.plot([r["inverse_alpha"] for r in reached], [r["length_needed"] for r in reached], "os"[j],
                   color=f"C{j}", label=f"{figure} <= {fit['target']:g}{slope}")
    grid = np.linspace(1, max(r["inverse_alpha"] for r in needed), 50)
    ax_need.plot(grid, grid, "k:", lw=1, label="l = 1/$\\alpha'$ (first same-pattern context)")
    ax_need.set(xscale="log", yscale="log", xlabel="1/$\\alpha'$", ylabel="smallest l reaching it (and after)",
                title=f"trained at $\\alpha$ = {train_alpha:g}")
    ax_need.legend(fontsize=7)
  _save(fig, path)


def plot_pruning(rows: Sequence[dict], path: str) -> None:
  """Error (solid) and hinge loss (dashed) against the pruning rate R: a panel per training alpha, domain, alpha'
  and ranking; a colour per strategy (random: mean over draws)."""
  keys = list(dict.fromkeys((r["train_alpha"], r["domain"], r["alpha_test"], r["ranking"]) for r in rows))
  fig, axes = _panels(keys, 4.2, 3.4)
  colors = {"smallest": "C2", "random": "C0", "largest": "C3"}
  for ax, key in zip(axes, keys):
    mine = [r for r in rows if (r["train_alpha"], r["domain"], r["alpha_test"], r["ranking"]) == key]
    for strategy, color in colors.items():
      rates = sorted({r["rate"] for r in mine if r["strategy"] == strategy})
      at = lambda rate, figure: np.mean([r[figure] for r in mine if r["strategy"] == strategy and r["rate"] == rate])
      ax.plot(rates, [at(x, "error") for x in rates], "o-", color=color, ms=2, label=f"{strategy} first"
              if strategy != "random" else "random")
      ax.plot(rates, [at(x, "hinge") for x in rates], "--", color=color, lw=1)
    ax.set(xlabel="R (share of the rows of $W_O$ zeroed)", ylabel="error / hinge", ylim=(-0.03, None),
           title=f"$\\alpha$ = {key[0]:g}, {key[1]}, $\\alpha'$ = {key[2]:g}, ranked by {key[3]}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
  _save(fig, path)


def plot_classical(rows: Sequence[dict], path: str) -> None:
  """Error against prompt length per method: a panel per noise setting and alpha' (ICL of each training alpha)."""
  keys = list(dict.fromkeys((r["noise"], r["alpha_test"]) for r in rows))
  fig, axes = _panels(keys, 4.6, 3.6)
  for ax, (noise, alpha) in zip(axes, keys):
    mine = [r for r in rows if (r["noise"], r["alpha_test"]) == (noise, alpha)]
    for j, method in enumerate(dict.fromkeys(r["method"] for r in mine)):
      curve = _sorted([r for r in mine if r["method"] == method], "test_prompt_len")
      ax.errorbar([r["test_prompt_len"] for r in curve], [r["error"] for r in curve],
                  yerr=[r["error_stderr"] for r in curve], fmt="o-" if method.startswith("icl") else "s:",
                  color=f"C{j}", ms=3, capsize=2, lw=1.5 if method.startswith("icl") else 1, label=method)
    ax.set(xscale="log", xlabel="prompt length l", ylabel="error (unseen tasks)", ylim=(-0.02, None),
           title=f"$\\alpha'$ = {alpha:g}, noise: {noise}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
  _save(fig, path)


def claim_path(directory: str, name: str) -> str:
  os.makedirs(directory, exist_ok=True)
  return os.path.join(directory, name)
