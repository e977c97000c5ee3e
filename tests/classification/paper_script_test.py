"""The prompt-length claim's arithmetic in scripts/classify_paper.py: the length needed and its fitted slope."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "classify_paper.py")


@pytest.fixture(scope="module")
def paper():
  spec = importlib.util.spec_from_file_location("classify_paper_under_test", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # defines absl flags once per test session: this module is its only importer
  return module


def test_length_needed_is_where_the_curve_stays_at_or_below_the_target(paper):
  lengths = np.array([1, 2, 3, 4, 6, 8])
  # Dips below at l = 2 but rises again at 3: the length needed is the one after the last excursion.
  assert paper.length_needed(lengths, np.array([1.0, 0.01, 0.2, 0.04, 0.0, 0.0]), 0.05) == 4
  assert paper.length_needed(lengths, np.zeros(6), 0.05) == 1                      # already there at the shortest
  assert paper.length_needed(lengths, np.array([1, 1, 1, 1, 0.5, 0.06]), 0.05) is None  # never reached
  assert paper.length_needed(lengths, np.array([1, 1, 1, 1, 0.5, 0.05]), 0.05) == 8    # at the target counts


def test_fitted_slope_recovers_a_power_law(paper):
  inverse = [1.25, 2.0, 4.0, 10.0]
  for slope in (1.0, 0.5, 2.0):
    assert paper.fitted_slope(inverse, [3.0 * x**slope for x in inverse]) == pytest.approx(slope, abs=1e-9)
  assert paper.fitted_slope([2.0, 2.0], [3.0, 4.0]) is None  # one distinct alpha' fits nothing
