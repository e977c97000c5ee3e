"""Figure plumbing shared by every experiment's plots: a headless backend and atomic PNG writes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from icl_theory.engine import files  # noqa: E402


def save(fig, path: str) -> None:
  """Writes `fig` as a PNG to `path` atomically and closes it."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  plt.close(fig)
  files.atomic_write_bytes(path, buffer.getvalue())


def heatmap(ax, matrix: np.ndarray, title: str, vmax: float) -> None:
  """A signed matrix on a symmetric red-blue scale, with integer ticks and a colour bar."""
  image = ax.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
  ax.set_title(title)
  ax.set_xticks(range(matrix.shape[1]))
  ax.set_yticks(range(matrix.shape[0]))
  ax.figure.colorbar(image, ax=ax, shrink=0.85)
