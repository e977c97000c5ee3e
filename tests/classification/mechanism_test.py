"""Tests for the mechanism analysis of the classifier (icl_theory/mechanism.py).

Most checks run on hand-built parameters whose behaviour follows from the
formula of F(P): W_Q = W_K = c I attends to the query's pattern, and an MLP whose
positive neurons read +q and negative ones -q copies the attended label. One
test trains a tiny model and holds it to the paper's mechanism.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

from icl_theory.classification import mechanism
from icl_theory.engine import trainer
from icl_theory.configs import classify
from icl_theory.classification import experiment as classification
from icl_theory.classification.task import ClassificationPrompts, ClassificationTask, sample_prompts_by_count
from icl_theory.engine.validation import ConfigError

_M = 8  # neurons of the hand-built models


@pytest.fixture(scope="module")
def task() -> ClassificationTask:
  return ClassificationTask(M1=4, M2=8, d_x=12, d_y=4, kappa_max=0.5, seed=2)


def _prompts(task: ClassificationTask, same: int, prompt_len: int = 8, batch: int = 256, seed: int = 0,
             domain: str = "unseen") -> ClassificationPrompts:
  prompts = sample_prompts_by_count(jax.random.PRNGKey(seed), task, batch, prompt_len, jnp.int32(same), domain)
  return jax.tree.map(np.asarray, prompts)


def _label_copier(task: ClassificationTask, c: float) -> dict:
  """W_Q = W_K = c I; W_V = I; neuron i reads +q (a_i > 0) or -q (a_i < 0): F = (2 mass_same - 1) y_q / 2."""
  dim = task.d_x + task.d_y
  q_part = np.concatenate([np.zeros(task.d_x), np.asarray(task.q, np.float64)])
  w_o = np.stack([q_part if i < _M // 2 else -q_part for i in range(_M)])
  return {"W_Q": c * jnp.eye(dim), "W_K": c * jnp.eye(dim), "W_V": jnp.eye(dim), "W_O": jnp.asarray(w_o, jnp.float32)}


# --- attention ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # 3-4 s with a cold compile cache
def test_sharp_identity_attention_puts_all_the_mass_on_the_querys_pattern(task):
  prompts = _prompts(task, same=2)
  stats = mechanism.attention_statistics(_label_copier(task, c=6.0), task, prompts)
  # Scores c^2 p_i . p_query: >= 0.75 c^2 for the query's pattern, <= 0.25 c^2 otherwise (|kappa| <= 1/2).
  assert stats["attention_same"] > 0.999
  assert stats["score_same"] - stats["score_other"] > 0.5 * 36


@pytest.mark.slow  # 3.7 s with a cold compile cache
def test_zero_query_weights_attend_uniformly_and_norms_are_split_by_pattern(task):
  prompts = _prompts(task, same=3)
  params = _label_copier(task, c=2.0)
  params["W_Q"] = jnp.zeros_like(params["W_Q"])
  stats = mechanism.attention_statistics(params, task, prompts)
  np.testing.assert_allclose(stats["attention_same"], 3 / 8, rtol=1e-5)  # uniform over 8 contexts, 3 on the pattern
  assert stats["query_norm"] == 0.0 and stats["score_same"] == stats["score_other"] == 0.0
  # |W_K p_i| = 2 |p_i|, |p_i|^2 = |x_i|^2 + |y_i q|^2 = |x_i|^2 + 1; split by the sampler's same_pattern mask.
  norms = 2 * np.sqrt((prompts.x.astype(np.float64) ** 2).sum(-1) + 1)
  np.testing.assert_allclose(stats["key_norm_same"], norms[prompts.same_pattern].mean(), rtol=1e-5)
  np.testing.assert_allclose(stats["key_norm_other"], norms[~prompts.same_pattern].mean(), rtol=1e-5)
  # The query token is (x_q, 0): |W_Q p_query| = c |x_q| for W_Q = c I.
  params["W_Q"] = 3.0 * jnp.eye(task.d_x + task.d_y)
  expected = 3 * np.linalg.norm(prompts.x_query.astype(np.float64), axis=-1).mean()
  np.testing.assert_allclose(mechanism.attention_statistics(params, task, prompts)["query_norm"], expected, rtol=1e-5)


# --- neurons -----------------------------------------------------------------------------------------------------


def test_neuron_statistics_on_constructed_rows(task):
  mean_idr = np.asarray(task.idr, np.float64).mean(0)
  unit_idr = mean_idr / np.linalg.norm(mean_idr)
  q = np.asarray(task.q, np.float64)
  other_x = np.asarray(task.idi[0], np.float64)  # orthogonal to every IDR pattern
  rows = np.zeros((_M, task.d_x + task.d_y))
  rows[0] = np.concatenate([3 * unit_idr, 4 * q])      # |row| 5, aligned with both
  rows[1] = np.concatenate([other_x, 0 * q])          # orthogonal to the mean IDR pattern; zero label part
  rows[2] = np.concatenate([unit_idr, -q])            # positive neuron reading -q
  rows[4] = np.concatenate([6 * unit_idr, -8 * q])    # |row| 10, negative neuron reading -q
  rows[5] = np.concatenate([-unit_idr, q])
  params = {"W_V": jnp.eye(rows.shape[1]), "W_O": jnp.asarray(rows, jnp.float32)}  # W_O W_V = rows
  stats = mechanism.neuron_statistics(params, task)
  np.testing.assert_allclose(stats.magnitude[[0, 1, 3, 4]], [5, 1, 0, 10], rtol=1e-6)
  np.testing.assert_allclose(stats.cos_idr[[0, 1, 2, 3, 4, 5]], [1, 0, 1, 0, 1, -1], atol=1e-6)
  np.testing.assert_allclose(stats.cos_q[[0, 1, 2, 3, 4, 5]], [1, 0, -1, 0, -1, 1], atol=1e-6)
  np.testing.assert_array_equal(stats.sign, [1, 1, 1, 1, -1, -1, -1, -1])

  largest = mechanism.largest_neurons(stats, 2)
  np.testing.assert_array_equal(largest["positive"], [0, 2])   # 5, then sqrt(2)
  np.testing.assert_array_equal(largest["negative"], [4, 5])   # 10, then sqrt(2)
  summary = mechanism.neuron_summary({"params": params}, task, 1)
  np.testing.assert_allclose([summary["positive_cos_q"], summary["negative_cos_q"]], [1, -1], atol=1e-6)
  np.testing.assert_allclose([summary["positive_magnitude"], summary["negative_magnitude"]], [5, 10], rtol=1e-6)
  with pytest.raises(ConfigError, match="count"):
    mechanism.largest_neurons(stats, _M // 2 + 1)
  with pytest.raises(ConfigError, match="dimension"):
    mechanism.neuron_statistics({"W_V": jnp.eye(5), "W_O": jnp.ones((_M, 5))}, task)


# --- pruning -----------------------------------------------------------------------------------------------------


def _params_with_row_norms(norms) -> dict:
  rng = np.random.default_rng(0)
  directions = rng.standard_normal((len(norms), 6))
  w_o = directions / np.linalg.norm(directions, axis=1, keepdims=True) * np.asarray(norms)[:, None]
  return {"W_Q": jnp.ones((6, 6)), "W_K": 2 * jnp.ones((6, 6)), "W_V": 3 * jnp.ones((6, 6)),
          "W_O": jnp.asarray(w_o, jnp.float32)}


_NORMS = [4.0, 0.5, 7.0, 2.0, 0.1, 5.0, 3.0, 6.0]  # rank from smallest: rows 4, 1, 3, 6, 0, 5, 7, 2


def test_pruning_at_rate_zero_is_the_identity():
  params = _params_with_row_norms(_NORMS)
  for strategy in mechanism.PRUNING_STRATEGIES:
    pruned = mechanism.prune(params, 0.0, strategy, jax.random.PRNGKey(0))
    for name in params:
      np.testing.assert_array_equal(pruned[name], params[name])


@pytest.mark.parametrize("rate, zeroed_smallest, zeroed_largest", [(0.25, [4, 1], [2, 7]),
                                                                   (0.5, [4, 1, 3, 6], [2, 7, 5, 0])])
def test_pruning_zeroes_the_right_rows(rate, zeroed_smallest, zeroed_largest):
  params = _params_with_row_norms(_NORMS)
  for strategy, zeroed in (("smallest", zeroed_smallest), ("largest", zeroed_largest)):
    pruned = mechanism.prune({"params": params}, rate, strategy)["params"]  # the wrapper is kept
    norms = np.linalg.norm(np.asarray(pruned["W_O"]), axis=1)
    assert sorted(np.flatnonzero(norms == 0)) == sorted(zeroed), strategy
    kept = [i for i in range(len(_NORMS)) if i not in zeroed]
    np.testing.assert_array_equal(np.asarray(pruned["W_O"])[kept], np.asarray(params["W_O"])[kept])
    for name in ("W_Q", "W_K", "W_V"):
      np.testing.assert_array_equal(pruned[name], params[name])
  # Smallest first keeps the largest rows: the surviving norms are the top ones.
  survivors = np.linalg.norm(np.asarray(mechanism.prune(params, rate, "smallest")["W_O"]), axis=1)
  np.testing.assert_allclose(sorted(survivors[survivors > 0]), sorted(_NORMS)[len(zeroed_smallest):], rtol=1e-6)


def test_pruning_by_w_o_w_v_ranks_by_the_rows_of_the_product_not_of_w_o():
  """W_V scales token directions unevenly, so a row of W_O that is long may read a direction W_V shrinks."""
  # Rows of W_O: norms 1..4 along the basis vectors e_0..e_3; W_V = diag(4, 3, 2, 1, ...) reverses their order.
  w_o = np.zeros((4, 6), np.float32)
  w_o[np.arange(4), np.arange(4)] = [1.0, 2.0, 3.0, 4.0]
  w_v = np.diag([4.0, 3.0, 1.0, 0.25, 1.0, 1.0]).astype(np.float32)
  params = {"W_Q": jnp.eye(6), "W_K": jnp.eye(6), "W_V": jnp.asarray(w_v), "W_O": jnp.asarray(w_o)}
  np.testing.assert_allclose(mechanism.neuron_norms(params, "w_o"), [1, 2, 3, 4])
  np.testing.assert_allclose(mechanism.neuron_norms(params, "w_o_w_v"), [4, 6, 3, 1])  # |W_O[i] W_V|
  zeroed = lambda ranking, strategy: sorted(np.flatnonzero(np.linalg.norm(np.asarray(
      mechanism.prune(params, 0.5, strategy, ranking=ranking)["W_O"]), axis=1) == 0))
  assert zeroed("w_o", "smallest") == [0, 1] and zeroed("w_o", "largest") == [2, 3]
  assert zeroed("w_o_w_v", "smallest") == [2, 3] and zeroed("w_o_w_v", "largest") == [0, 1]
  with pytest.raises(ConfigError, match="^ranking="):
    mechanism.prune(params, 0.5, "smallest", ranking="w_v")


def test_random_pruning_zeroes_the_right_count_and_depends_on_the_key():
  params = _params_with_row_norms(_NORMS)
  zeroed = [frozenset(np.flatnonzero(np.linalg.norm(np.asarray(
      mechanism.prune(params, 0.5, "random", jax.random.PRNGKey(s))["W_O"]), axis=1) == 0)) for s in range(6)]
  assert all(len(z) == 4 for z in zeroed)
  assert len(set(zeroed)) > 1
  np.testing.assert_array_equal(mechanism.prune(params, 1.0, "random", jax.random.PRNGKey(0))["W_O"], 0)


def test_pruning_counts_and_bad_input():
  assert mechanism.num_pruned(64, 0.1) == 6      # 6.4 -> 6
  assert mechanism.num_pruned(10, 0.25) == 3     # 2.5 rounds half up
  assert mechanism.num_pruned(8, 1.0) == 8
  params = _params_with_row_norms(_NORMS)
  with pytest.raises(ConfigError, match="rate"):
    mechanism.prune(params, 1.5, "smallest")
  with pytest.raises(ConfigError, match="strategy"):
    mechanism.prune(params, 0.5, "median")
  with pytest.raises(ConfigError, match="key"):
    mechanism.prune(params, 0.5, "random")


# --- error against the number of same-pattern contexts ------------------------------------------------------------


def test_label_copier_errs_only_without_a_same_pattern_context(task):
  prompt_len = 6
  errors = mechanism.error_by_count(_label_copier(task, c=6.0), task, jax.random.PRNGKey(1), prompt_len, 512)
  np.testing.assert_array_equal(errors.counts, np.arange(prompt_len + 1))
  # k = 0: it attends to the other pattern and copies the wrong label; any k >= 1 suffices.
  np.testing.assert_allclose(errors.icl_error, [1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(errors.icl_error_stderr, 0, atol=1e-6)
  np.testing.assert_allclose(errors.attention_same, [0, 1, 1, 1, 1, 1, 1], atol=1e-4)
  # Majority vote: wrong below half, a coin at a tie, right above.
  np.testing.assert_allclose(errors.majority_vote_error, [1, 1, 1, 0.5, 0, 0, 0])

  mixture = mechanism.binomial_mixture(errors, 0.4)
  np.testing.assert_allclose(mixture["icl_error"], 0.6**prompt_len, rtol=1e-6)
  np.testing.assert_allclose(mixture["ideal_error"], 0.6**prompt_len, rtol=1e-6)
  p_below = sum(math.comb(6, k) * 0.4**k * 0.6 ** (6 - k) for k in range(3))
  p_tie = math.comb(6, 3) * 0.4**3 * 0.6**3
  np.testing.assert_allclose(mixture["majority_vote_error"], p_below + 0.5 * p_tie, rtol=1e-6)


def test_binomial_weights_and_bad_counts(task):
  np.testing.assert_allclose(mechanism.binomial_weights(3, 0.5), np.array([1, 3, 3, 1]) / 8)
  np.testing.assert_allclose(mechanism.binomial_weights(4, 1.0), [0, 0, 0, 0, 1])
  params = _label_copier(task, c=1.0)
  with pytest.raises(ConfigError, match="counts"):
    mechanism.error_by_count(params, task, jax.random.PRNGKey(0), 4, 16, counts=[0, 5])
  partial = mechanism.error_by_count(params, task, jax.random.PRNGKey(0), 4, 16, counts=[1, 2])
  with pytest.raises(ConfigError, match="every count"):
    mechanism.binomial_mixture(partial, 0.5)


@pytest.mark.slow
def test_binomial_prompts_have_a_binomial_count_of_same_pattern_contexts(task):
  prompt_len, alpha, batch = 5, 0.3, 4000
  prompts = mechanism.sample_binomial_prompts(jax.random.PRNGKey(4), task, batch, prompt_len, alpha)
  assert prompts.x.shape == (batch, prompt_len, task.d_x)
  counts = prompts.same_pattern.sum(1)
  frequencies = np.bincount(counts, minlength=prompt_len + 1) / batch
  expected = mechanism.binomial_weights(prompt_len, alpha)
  np.testing.assert_array_less(np.abs(frequencies - expected), 4 * np.sqrt(expected * (1 - expected) / batch) + 1e-12)
  # Labels follow the pattern: same-pattern contexts carry the query's label, the others the opposite one.
  np.testing.assert_array_equal(prompts.y, np.where(prompts.same_pattern, 1, -1) * prompts.y_query[:, None])


# --- classical classifiers ---------------------------------------------------------------------------------------


@pytest.mark.slow  # 3-4 s with a cold compile cache
def test_classical_classifiers_are_perfect_on_separable_prompts(task):
  # Each context is its pattern plus at most 0.5 of an orthogonal one: the two labels are separable.
  prompts = _prompts(task, same=6, prompt_len=10, batch=40)
  for name, prediction in mechanism.classical_predictions(prompts).items():
    np.testing.assert_array_equal(prediction, prompts.y_query, err_msg=name)


def test_classical_classifiers_match_direct_scikit_learn_calls():
  rng = np.random.default_rng(3)
  batch, length, dim = 6, 7, 5
  x = rng.standard_normal((batch, length, dim))
  y = np.where(rng.random((batch, length)) < 0.5, -1.0, 1.0)
  y[:, :2] = [1.0, -1.0]  # both labels in every context
  y[0] = 1.0              # but one context with a single label
  x_query = rng.standard_normal((batch, dim))
  prompts = ClassificationPrompts(x=x, y=y, x_query=x_query, y_query=np.ones(batch), same_pattern=y > 0)
  predictions = mechanism.classical_predictions(prompts)
  direct = {"logistic_regression": LogisticRegression, "svm_rbf": lambda: SVC(kernel="rbf"),
            "svm_linear": lambda: SVC(kernel="linear"), "1nn": lambda: KNeighborsClassifier(1),
            "3nn": lambda: KNeighborsClassifier(3)}
  assert set(predictions) == set(direct)
  for name, make in direct.items():
    assert predictions[name][0] == 1.0, name  # the single-label context predicts its label
    expected = [make().fit(x[b], y[b]).predict(x_query[b][None])[0] for b in range(1, batch)]
    np.testing.assert_array_equal(predictions[name][1:], expected, err_msg=name)
  # Two contexts: "3-NN" votes with both.
  two = ClassificationPrompts(x=x[1:, :2], y=y[1:, :2], x_query=x_query[1:], y_query=np.ones(batch - 1),
                              same_pattern=y[1:, :2] > 0)
  expected = [KNeighborsClassifier(2).fit(x[b, :2], y[b, :2]).predict(x_query[b][None])[0] for b in range(1, batch)]
  np.testing.assert_array_equal(mechanism.classical_predictions(two, ["3nn"])["3nn"], expected)
  with pytest.raises(ConfigError, match="classifier"):
    mechanism.classical_predictions(two, ["knn"])


# --- a trained model ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_trained_model_attends_to_the_querys_pattern_and_survives_smallest_first_pruning():
  config = classify.get_config()
  config.update(M1=4, M2=8, d_x=12, d_y=4, m=16, prompt_len=8, batch_size=64, steps=200, learning_rate=0.2,
                warmup_steps=20, log_every=200, checkpoint_every=0)
  task = classification.validate_config(config)
  objective = classification.make_objective(task, config)
  optimizer, schedule = trainer.optimizer_from_config(config)
  result = trainer.fit(objective, optimizer, schedule, trainer.LoopSettings.from_config(config), config.seed, task)
  params = result.state.params
  init = objective.init(jax.random.split(jax.random.PRNGKey(config.seed))[0])  # the trainer's initial parameters
  prompts = _prompts(task, same=4, prompt_len=8, batch=512, seed=5, domain="train")  # alpha' = 1/2
  # Uniform attention would give 1/2; W_Q = W_K = 0.3 I starts just above it, training takes it to ~1.
  assert 0.45 < mechanism.attention_statistics(init, task, prompts)["attention_same"] < 0.6
  assert mechanism.attention_statistics(params, task, prompts)["attention_same"] > 0.95
  assert float(np.mean(mechanism.icl_errors(params, task, prompts))) == 0.0

  def margin(pruned) -> float:  # mean y F(P)
    return float(np.mean(prompts.y_query * np.asarray(mechanism.forward(pruned, task, prompts)[0])))

  # The smallest quarter of the neurons carries almost none of the margin; the largest quarter much of it.
  full = margin(params)
  assert margin(mechanism.prune(params, 0.25, "smallest")) > 0.95 * full
  assert margin(mechanism.prune(params, 0.25, "largest")) < 0.8 * full
  errors = lambda rate, strategy: float(np.mean(mechanism.icl_errors(mechanism.prune(params, rate, strategy), task,
                                                                      prompts)))
  assert errors(0.75, "smallest") == 0.0 and errors(0.75, "largest") > 0.2
  summary = mechanism.neuron_summary(params, task, 2)
  assert summary["positive_cos_q"] > 0.5 and summary["negative_cos_q"] < -0.5
