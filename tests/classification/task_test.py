"""Tests for ClassificationTask and its prompt sampler (icl_theory/classification/task.py)."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.classification import task as classification
from icl_theory.classification.task import (ClassificationTask, num_same, prompt_tokens, sample_prompts,
                                             sample_prompts_by_count)
from icl_theory.engine.validation import ConfigError

_Z = 4.0  # every Monte Carlo check holds within this many standard errors
# One batch size and prompt length for the statistical checks, and the count of same-pattern
# contexts traced: one compiled sampler per domain serves them all.
_BATCH, _LEN = 4096, 10
_sample_jit = jax.jit(sample_prompts_by_count, static_argnums=(2, 3, 5))


def _sample(seed: int, task: ClassificationTask, domain: str, same: int, prompt_len: int = _LEN):
  prompts = _sample_jit(jax.random.PRNGKey(seed), task, _BATCH, prompt_len, jnp.int32(same), domain)
  return jax.tree.map(np.asarray, prompts)


@pytest.fixture(scope="module")
def task() -> ClassificationTask:
  return ClassificationTask(M1=6, M2=24, d_x=30, d_y=5, kappa_max=0.5, s1=1.0, num_ood_patterns=3, seed=3)


def _relevant_index(task: ClassificationTask, x_NxD: np.ndarray, domain: str) -> np.ndarray:
  """Which relevant pattern each input carries: the irrelevant part is orthogonal to every relevant pattern."""
  relevant = np.asarray(task.odr if domain == "ood" else task.idr, np.float64)
  scores = np.asarray(x_NxD, np.float64) @ relevant.T / (relevant**2).sum(1)
  index = scores.argmax(-1)
  np.testing.assert_allclose(scores.max(-1), 1.0, atol=1e-4)  # exactly one pattern, with coefficient 1
  return index


def test_patterns_are_orthonormal_and_q_is_a_unit_vector(task):
  patterns = np.concatenate([task.idr, task.idi]).astype(np.float64)
  assert patterns.shape == (task.M1 + task.M2, task.d_x)
  np.testing.assert_allclose(patterns @ patterns.T, np.eye(task.M1 + task.M2), atol=1e-6)
  assert task.q.shape == (task.d_y,)
  np.testing.assert_allclose(np.linalg.norm(task.q), 1.0, atol=1e-6)


def test_patterns_are_drawn_from_the_seed():
  a, b, c = ClassificationTask(seed=5), ClassificationTask(seed=5), ClassificationTask(seed=6)
  for name in ("idr", "idi", "q", "odi"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.allclose(getattr(a, name), getattr(c, name)), name


@pytest.mark.parametrize("m1", [2, 3, 4, 6, 9])
def test_training_pairs_cover_every_pattern_with_both_labels_and_unseen_is_the_rest(m1):
  task = ClassificationTask(M1=m1, M2=4, d_x=m1 + 4, num_ood_patterns=2)
  train = {tuple(p) for p in task.train_pairs.tolist()}
  unseen = {tuple(p) for p in task.unseen_pairs.tolist()}
  everything = {(a, b) for a in range(m1) for b in range(m1) if a != b}
  assert len(train) == len(task.train_pairs) and len(unseen) == len(task.unseen_pairs)  # no repeats
  assert train | unseen == everything and not train & unseen
  assert {a for a, _ in train} == set(range(m1)) and {b for _, b in train} == set(range(m1))
  assert all((b, a) in train for a, b in train)
  assert all(((a + 1) % m1, a) in train and (a, (a + 1) % m1) in train for a in range(m1))
  if m1 >= 4:
    assert len(unseen) == m1 * (m1 - 1) - 2 * m1


@pytest.mark.parametrize("s1", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("m1, num_ood", [(6, 3), (6, 2), (7, 3), (5, 5)])
def test_odr_coefficients_are_nonnegative_sum_to_s1_on_disjoint_supports(m1, num_ood, s1):
  task = ClassificationTask(M1=m1, M2=3, d_x=m1 + 3, s1=s1, num_ood_patterns=num_ood)
  c = np.asarray(task.odr_coefficients, np.float64)
  assert c.shape == (num_ood, m1) and (c >= 0).all()
  np.testing.assert_allclose(c.sum(1), s1, rtol=1e-6)
  support = c > 0
  assert (support.sum(0) <= 1).all() and support.any(1).all()  # disjoint, none empty
  np.testing.assert_allclose(task.odr, c @ task.idr, atol=1e-6)
  gram = task.odr.astype(np.float64) @ task.odr.T.astype(np.float64)
  np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-6)  # orthogonal: distinguishable
  assert {tuple(p) for p in task.ood_pairs.tolist()} == {(a, b) for a in range(num_ood) for b in range(num_ood)
                                                         if a != b}


def test_with_s1_rescales_only_the_odr_patterns(task):
  other = task.with_s1(2.0)
  np.testing.assert_allclose(other.odr_coefficients.sum(1), 2.0, rtol=1e-6)
  np.testing.assert_allclose(other.odr, 2.0 * task.odr, atol=1e-6)
  np.testing.assert_array_equal(other.idr, task.idr)
  assert jax.tree.structure(other) == jax.tree.structure(task)  # the same compiled programs serve both


def test_odi_patterns_are_unit_vectors_in_the_idi_span(task):
  odi = task.odi.astype(np.float64)
  idi = task.idi.astype(np.float64)
  np.testing.assert_allclose(np.linalg.norm(odi, axis=1), 1.0, atol=1e-6)
  np.testing.assert_allclose(odi - (odi @ idi.T) @ idi, 0.0, atol=1e-6)
  assert not np.allclose(np.abs(odi @ idi.T).max(1), 1.0)  # new directions, not the IDI patterns themselves


@pytest.mark.parametrize("prompt_len, alpha, same", [
    (10, 0.3, 3), (10, 0.35, 3), (10, 0.39, 3), (3, 2 / 3, 2), (20, 0.5, 10), (5, 0.5, 2), (4, 1.0, 4),
    (10, 0.7, 7), (20, 0.01, 0), (1, 0.2, 0), (4, 0.2, 0), (5, 0.2, 1), (1, 1.0, 1),
])
def test_num_same_is_the_floor_of_alpha_l_and_may_be_zero(prompt_len, alpha, same):
  assert num_same(prompt_len, alpha) == same


@pytest.mark.parametrize("domain, prompt_len, alpha", [
    *[(d, _LEN, a) for d in classification.DOMAINS for a in (0.3, 0.35, 0.5, 1.0, 0.01)],
    ("train", 1, 0.5), ("unseen", 4, 0.2),
])
def test_sampler_puts_exactly_the_alpha_count_at_uniform_positions(task, domain, prompt_len, alpha):
  same = num_same(prompt_len, alpha)
  prompts = _sample(prompt_len, task, domain, same, prompt_len)
  chex.assert_shape(prompts.same_pattern, (_BATCH, prompt_len))
  np.testing.assert_array_equal(prompts.same_pattern.sum(1), same)
  # Each position holds a same-pattern context with probability same / l.
  p = same / prompt_len
  frequency = prompts.same_pattern.astype(np.float64).mean(0)
  assert np.all(np.abs(frequency - p) <= _Z * math.sqrt(p * (1 - p) / _BATCH) + 1e-12)


def test_sample_prompts_draws_the_rounded_alpha_count(task):
  key = jax.random.PRNGKey(0)
  by_alpha = jax.jit(sample_prompts, static_argnums=(2, 3, 4, 5))(key, task, _BATCH, _LEN, 0.35, "train")
  by_count = _sample_jit(key, task, _BATCH, _LEN, jnp.int32(num_same(_LEN, 0.35)), "train")
  chex.assert_trees_all_equal(by_alpha, by_count)


@pytest.mark.parametrize("domain", classification.DOMAINS)
def test_labels_and_patterns_are_consistent_with_the_task(task, domain):
  prompts = _sample(1, task, domain, num_same(_LEN, 0.4))
  context = _relevant_index(task, prompts.x.reshape(-1, task.d_x), domain).reshape(_BATCH, _LEN)
  query = _relevant_index(task, prompts.x_query, domain)
  # The contexts carry the query's pattern or one other, the same in the whole prompt.
  other = context[np.arange(_BATCH), np.argmin(context == query[:, None], axis=1)]
  assert (other != query).all()
  np.testing.assert_array_equal(context, np.where(prompts.same_pattern, query[:, None], other[:, None]))
  # The two form a task of this domain, mu_a labelled +1 and mu_b -1, in the query and in every context.
  a = np.where(prompts.y_query == 1, query, other)
  b = np.where(prompts.y_query == 1, other, query)
  pairs = {tuple(p) for p in np.asarray(task.pairs(domain)).tolist()}
  assert set(zip(a.tolist(), b.tolist())) <= pairs
  np.testing.assert_array_equal(prompts.y, np.where(context == a[:, None], 1.0, -1.0))
  np.testing.assert_array_equal(prompts.y, np.where(prompts.same_pattern, 1, -1) * prompts.y_query[:, None])
  assert set(np.unique(prompts.y_query)) == {-1.0, 1.0}


@pytest.mark.parametrize("domain", classification.DOMAINS)
def test_irrelevant_part_is_kappa_times_an_irrelevant_pattern(task, domain):
  prompts = _sample(2, task, domain, num_same(_LEN, 0.5))
  x_NxD = np.concatenate([prompts.x.reshape(-1, task.d_x), prompts.x_query])
  relevant = np.asarray(task.odr if domain == "ood" else task.idr, np.float64)
  residual = x_NxD - relevant[_relevant_index(task, x_NxD, domain)]
  irrelevant = np.asarray(task.odi if domain == "ood" else task.idi, np.float64)
  coefficients = residual @ irrelevant.T  # kappa on one pattern (ODI patterns are not orthogonal: take the largest)
  which = np.abs(coefficients).argmax(1)
  kappa = coefficients[np.arange(len(which)), which]
  np.testing.assert_allclose(residual, kappa[:, None] * irrelevant[which], atol=1e-5)
  # kappa ~ U[-K, K]: |kappa| <= K, mean 0, variance K^2 / 3; every irrelevant pattern is used, uniformly.
  k = float(task.kappa_max)
  assert np.abs(kappa).max() <= k + 1e-6
  assert abs(kappa.mean()) <= _Z * k / math.sqrt(3 * kappa.size)
  var_stderr = math.sqrt((k**4 / 5 - (k**2 / 3) ** 2) / kappa.size)  # Var(kappa^2) = E kappa^4 - (E kappa^2)^2
  assert abs((kappa**2).mean() - k**2 / 3) <= _Z * var_stderr
  counts = np.bincount(which, minlength=len(irrelevant))
  p = 1 / len(irrelevant)
  assert np.all(np.abs(counts / which.size - p) <= _Z * math.sqrt(p * (1 - p) / which.size))


@pytest.mark.parametrize("domain", classification.DOMAINS)
def test_tasks_and_query_sides_are_uniform(task, domain):
  prompts = _sample(4, task, domain, num_same(_LEN, 0.5))
  query = _relevant_index(task, prompts.x_query, domain)
  first = _relevant_index(task, prompts.x[np.arange(_BATCH), np.argmin(prompts.same_pattern, 1)], domain)
  y_q = prompts.y_query
  a = np.where(y_q == 1, query, first)
  b = np.where(y_q == 1, first, query)
  pairs = np.asarray(task.pairs(domain)).tolist()
  counts = np.array([np.sum((a == pa) & (b == pb)) for pa, pb in pairs])
  p = 1 / len(pairs)
  assert counts.sum() == _BATCH
  assert np.all(np.abs(counts / _BATCH - p) <= _Z * math.sqrt(p * (1 - p) / _BATCH))
  assert abs((y_q == 1).mean() - 0.5) <= _Z * 0.5 / math.sqrt(_BATCH)


def test_prompt_tokens_embed_labels_as_y_q_and_the_query_with_zero(task):
  prompts = _sample(5, task, "train", 6)
  context, query = jax.jit(prompt_tokens)(prompts, task.q)
  chex.assert_shape(context, (_BATCH, _LEN, task.d_x + task.d_y))
  chex.assert_shape(query, (_BATCH, task.d_x + task.d_y))
  np.testing.assert_array_equal(context[..., :task.d_x], prompts.x)
  np.testing.assert_allclose(context[..., task.d_x:], np.asarray(prompts.y)[..., None] * task.q, atol=1e-7)
  np.testing.assert_array_equal(query[:, :task.d_x], prompts.x_query)
  np.testing.assert_array_equal(query[:, task.d_x:], 0.0)


@pytest.mark.parametrize("field, value", [
    ("M1", 1), ("M1", 0), ("M1", 2.5), ("M1", True), ("M2", 0), ("d_x", 29), ("d_x", 0), ("d_y", 0),
    ("kappa_max", -0.1), ("kappa_max", math.nan), ("s1", 0.0), ("s1", -1.0), ("s1", math.inf),
    ("num_ood_patterns", 1), ("num_ood_patterns", 7), ("seed", -1), ("seed", "0"),
])
def test_bad_task_field_names_field_and_value(field, value):
  kwargs = dict(M1=6, M2=24, d_x=30)
  kwargs[field] = value
  with pytest.raises(ConfigError) as error:
    ClassificationTask(**kwargs)
  assert isinstance(error.value, ValueError)
  assert str(error.value).startswith(f"{field}={value!r} is not allowed: "), str(error.value)


@pytest.mark.parametrize("field, kwargs", [
    ("alpha", dict(alpha=0.0)), ("alpha", dict(alpha=1.5)), ("alpha", dict(alpha=-0.2)), ("alpha", dict(alpha="half")),
    ("prompt_len", dict(prompt_len=0)), ("prompt_len", dict(prompt_len=2.0)), ("domain", dict(domain="test")),
    ("batch", dict(batch=0)),
])
def test_bad_sampler_argument_names_it(task, field, kwargs):
  arguments = dict(batch=4, prompt_len=5, alpha=0.5, domain="train") | kwargs
  with pytest.raises(ConfigError, match=f"^{field}="):
    sample_prompts(jax.random.PRNGKey(0), task, **arguments)


def test_unseen_domain_of_a_task_without_unseen_pairs_is_refused():
  task = ClassificationTask(M1=3, M2=3, d_x=6, num_ood_patterns=2)
  assert len(task.unseen_pairs) == 0
  with pytest.raises(ConfigError, match="^domain='unseen' is not allowed"):
    sample_prompts(jax.random.PRNGKey(0), task, 4, 5, 0.5, "unseen")


def test_first_of_permutation_is_the_stable_argsort_rule_ties_included():
  # The sampler's same-pattern positions: argsort(u) < count, computed by comparisons.
  rng = np.random.default_rng(0)
  every_count = jax.jit(jax.vmap(classification._first_of_permutation, in_axes=(None, 0)))
  for length in (1, 2, 7, 20):
    for tied in (False, True):  # ties: float32 uniforms meet one about once per 10^5 prompts
      u = rng.integers(0, 3, length) / 3 if tied else rng.random(length)
      u = u.astype(np.float32)
      got = np.asarray(every_count(u, np.arange(length + 1)))
      expected = np.stack([np.argsort(u, kind="stable") < count for count in range(length + 1)])
      np.testing.assert_array_equal(got, expected)


# With noise: 4 s (four more sampler programs); the noise-free case keeps the path in the fast set.
@pytest.mark.parametrize("label_noise,feature_noise", [(0.0, 0.0), pytest.param(0.2, 0.1, marks=pytest.mark.slow)])
def test_a_traced_domain_index_draws_what_the_domain_named_draws(task, label_noise, feature_noise):
  """One program for every domain (the Evaluator's): the same prompts, to the bit, as each domain's own tables."""
  noisy = task.with_noise(label_noise, feature_noise)
  by_index = jax.jit(sample_prompts_by_count, static_argnums=(2, 3))
  for i, domain in enumerate(classification.DOMAINS):
    key = jax.random.fold_in(jax.random.PRNGKey(5), i)
    named = _sample_jit(key, noisy, 256, 7, jnp.int32(3), domain)
    traced = by_index(key, noisy, 256, 7, jnp.int32(3), jnp.int32(i))
    for field, a, b in zip(named._fields, named, traced):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{domain}: {field}")


def test_check_domain_refuses_an_empty_or_unknown_domain():
  small = ClassificationTask(M1=3, M2=3, d_x=6, num_ood_patterns=2)
  assert classification.check_domain(small, "train") == "train"
  with pytest.raises(ConfigError, match="^domain='unseen' is not allowed"):
    classification.check_domain(small, "unseen")
  with pytest.raises(ConfigError, match="^domain="):
    classification.check_domain(small, "validation")
