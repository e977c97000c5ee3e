"""Matplotlib figures of runs; every function writes one PNG and returns nothing."""

from __future__ import annotations

from typing import Any, Sequence

import io

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
