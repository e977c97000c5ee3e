"""The out-of-domain constructions, the noise options and the hinge loss / margin outcomes (issue 17)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.classification.task import (OOD_CONSTRUCTIONS, OUTCOMES, ClassificationPrompts, ClassificationTask,
                                             hinge_losses, outcome_sums, sample_prompts_by_count, strided_groups,
                                             training_pairs)
from icl_theory.classification import task as classification_task
from icl_theory.engine.validation import ConfigError

_Z = 4.0  # Monte Carlo checks hold within this many standard errors
_BATCH, _LEN = 2048, 10
_sample = jax.jit(sample_prompts_by_count, static_argnums=(2, 3, 5))


def _task(construction: str, m1: int = 6, num_ood: int = 3, draws: int = 4, s1: float = 1.0, **kwargs):
  return ClassificationTask(M1=m1, M2=4, d_x=m1 + 4, d_y=3, s1=s1, num_ood_patterns=num_ood, seed=2,
                            ood_construction=construction, ood_draws=draws, **kwargs)


def _groups(coefficients_RxM: np.ndarray) -> list[frozenset]:
  return [frozenset(np.flatnonzero(row > 0).tolist()) for row in coefficients_RxM]


@pytest.mark.parametrize("construction", OOD_CONSTRUCTIONS)
@pytest.mark.parametrize("m1, num_ood, s1", [(6, 3, 1.0), (6, 2, 0.5), (8, 4, 2.0), (6, 6, 1.5)])
def test_every_construction_is_nonnegative_sums_to_s1_and_has_disjoint_groups_per_block(construction, m1, num_ood,
                                                                                           s1):
  draws = 3
  task = _task(construction, m1, num_ood, draws, s1)
  c = np.asarray(task.odr_coefficients, np.float64)
  assert c.shape == (draws * num_ood, m1) and (c >= 0).all()
  np.testing.assert_allclose(c.sum(1), s1, rtol=1e-5)
  for d in range(draws):
    support = c[d * num_ood:(d + 1) * num_ood] > 0
    assert (support.sum(0) <= 1).all() and support.any(1).all()  # disjoint, none empty
  np.testing.assert_allclose(task.odr, c @ np.asarray(task.idr, np.float64), atol=1e-5)
  # Tasks pair two patterns of one block only, every ordered pair of each block once.
  pairs = task.ood_pairs
  assert len(pairs) == draws * num_ood * (num_ood - 1)
  assert (pairs[:, 0] // num_ood == pairs[:, 1] // num_ood).all() and (pairs[:, 0] != pairs[:, 1]).all()
  assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)


def test_constructions_share_shapes_and_the_task_switches_between_them():
  task = _task("training_pairs")
  for construction in OOD_CONSTRUCTIONS:
    other = task.with_ood(construction, 2.0)
    assert jax.tree.structure(other) == jax.tree.structure(task)  # one compiled program serves all three
    assert other.ood_construction == construction and float(other.s1) == 2.0
    built = _task(construction, s1=2.0)
    np.testing.assert_array_equal(other.odr_coefficients, built.odr_coefficients)
    np.testing.assert_array_equal(other.idr, task.idr)
    # Through a flatten / unflatten (as in a jitted call's output) the construction survives.
    assert jax.tree.unflatten(*reversed(jax.tree.flatten(other))).ood_construction == construction


def _training_pair_sets(m1: int) -> set[frozenset]:
  return {frozenset(p) for p in training_pairs(m1).tolist()}


def test_training_pairs_groups_are_training_pairs_and_non_training_pairs_groups_hold_none():
  pairs = _training_pair_sets(6)
  assert set(_groups(np.asarray(_task("training_pairs", draws=1).odr_coefficients))) <= pairs
  for m1, num_ood in ((6, 3), (6, 2), (8, 4), (9, 3), (4, 3), (7, 3), (5, 3)):
    train = _training_pair_sets(m1)
    for group in _groups(np.asarray(_task("non_training_pairs", m1, num_ood, 1).odr_coefficients)):
      assert not any(frozenset((a, b)) in train for a in group for b in group if a != b), (m1, num_ood, group)
  assert strided_groups(6, 3) == [[0, 3], [1, 4], [2, 5]]


def test_non_training_pairs_refuses_sizes_where_a_group_must_hold_a_training_pair():
  # M1 = 5, M1' = 2: a group of 3 of the 5 patterns on a cycle always holds two neighbours.
  with pytest.raises(ConfigError, match="^ood_construction='non_training_pairs' is not allowed"):
    _task("non_training_pairs", 5, 2)
  # M1 = 4, M1' = 3: the strided group {0, 3} holds neighbours, so another partition is searched for.
  groups = classification_task.non_training_groups(4, 3)
  assert groups != strided_groups(4, 3) and sorted(i for g in groups for i in g) == [0, 1, 2, 3]
  assert sorted(map(len, groups)) == sorted(map(len, classification_task.ood_groups(4, 3)))


def test_random_draws_differ_scale_with_s1_and_come_from_the_seed():
  task = _task("random", draws=6)
  c = np.asarray(task.odr_coefficients, np.float64)
  blocks = [c[d * 3:(d + 1) * 3] for d in range(6)]
  assert len({tuple(sorted(map(tuple, _groups(b)))) for b in blocks}) > 1 or not np.allclose(blocks[0], blocks[1])
  np.testing.assert_allclose(task.with_ood("random", 3.0).odr_coefficients, 3.0 * c, rtol=1e-5)
  np.testing.assert_array_equal(_task("random", draws=6).odr_coefficients, task.odr_coefficients)


def test_random_groups_are_uniform_partitions():
  """Over many draws, each IDR pattern pair shares a group as often as a uniform random partition implies."""
  m1, num_ood, draws = 6, 3, 600
  c = np.asarray(_task("random", m1, num_ood, draws).odr_coefficients)
  together = np.zeros((m1, m1))
  for group in _groups(c):
    for a in group:
      for b in group:
        together[a, b] += a != b
  p = 1 / (m1 - 1)  # groups of 2 of 6: a given other pattern is one's partner with probability 1/5
  off = together[~np.eye(m1, dtype=bool)] / draws
  assert np.all(np.abs(off - p) <= _Z * math.sqrt(p * (1 - p) / draws))


@pytest.mark.parametrize("field, value", [("ood_construction", "pairs"), ("ood_draws", 0), ("label_noise", 0.6),
                                          ("label_noise", -0.1), ("feature_noise", -1.0)])
def test_bad_construction_and_noise_fields_name_the_field(field, value):
  with pytest.raises(ConfigError, match=f"^{field}="):
    ClassificationTask(**{field: value})


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_label_noise_flips_context_labels_at_its_rate_and_never_the_query(noise):
  clean_task = _task("training_pairs")
  noisy_task = clean_task.with_noise(label_noise=noise)
  key = jax.random.PRNGKey(1)
  clean = _sample(key, clean_task, _BATCH, _LEN, jnp.int32(5), "unseen")
  noisy = _sample(key, noisy_task, _BATCH, _LEN, jnp.int32(5), "unseen")
  np.testing.assert_array_equal(noisy.x, clean.x)
  np.testing.assert_array_equal(noisy.y_query, clean.y_query)
  flipped = np.asarray(noisy.y != clean.y)
  assert abs(flipped.mean() - noise) <= _Z * math.sqrt(noise * (1 - noise) / flipped.size)


@pytest.mark.parametrize("sigma", [0.05, 0.5])
def test_feature_noise_adds_gaussian_noise_of_its_std_to_every_input(sigma):
  clean_task = _task("training_pairs")
  key = jax.random.PRNGKey(2)
  clean = _sample(key, clean_task, _BATCH, _LEN, jnp.int32(5), "ood")
  noisy = _sample(key, clean_task.with_noise(feature_noise=sigma), _BATCH, _LEN, jnp.int32(5), "ood")
  np.testing.assert_array_equal(noisy.y, clean.y)
  residual = np.concatenate([np.asarray(noisy.x - clean.x).ravel(), np.asarray(noisy.x_query - clean.x_query).ravel()])
  residual = residual.astype(np.float64) / sigma
  n = residual.size
  assert abs(residual.mean()) <= _Z / math.sqrt(n)
  assert abs((residual**2).mean() - 1.0) <= _Z * math.sqrt(2 / n)  # Var(z^2) = 2 for z ~ N(0, 1)


def test_a_zero_count_puts_no_context_on_the_query_pattern():
  prompts = _sample(jax.random.PRNGKey(3), _task("training_pairs"), 64, 4, jnp.int32(0), "unseen")
  assert not np.asarray(prompts.same_pattern).any()
  np.testing.assert_array_equal(prompts.y, -np.asarray(prompts.y_query)[:, None] * np.ones((1, 4)))


def test_outcome_sums_hold_the_hinge_loss_and_the_margin_of_f():
  output = jnp.array([2.0, 0.5, -0.3, 0.0, -1.5])
  y = jnp.array([1.0, 1.0, 1.0, -1.0, -1.0])
  same = jnp.array([[True, False], [True, True], [False, False], [True, False], [False, True]])
  prompts = ClassificationPrompts(x=jnp.zeros((5, 2, 1)), y=jnp.where(same, y[:, None], -y[:, None]),
                                  x_query=jnp.zeros((5, 1)), y_query=y, same_pattern=same)
  attention = jnp.full((5, 2), 0.5)
  sums = dict(zip(OUTCOMES, np.asarray(outcome_sums(output, attention, prompts), np.float64)))
  margin = np.asarray(y * output, np.float64)
  hinge = np.maximum(0.0, 1.0 - margin)
  np.testing.assert_allclose(np.asarray(hinge_losses(output, y)), hinge, atol=1e-7)
  np.testing.assert_allclose([sums["hinge"], sums["hinge_sq"]], [hinge.sum(), (hinge**2).sum()], atol=1e-5)
  np.testing.assert_allclose([sums["margin"], sums["margin_sq"]], [margin.sum(), (margin**2).sum()], atol=1e-5)
  # The error reads only the sign: right at margin 0.5 (yet a hinge loss of 0.5), half an error at F = 0.
  np.testing.assert_allclose(sums["error"], 0 + 0 + 1 + 0.5 + 0)
