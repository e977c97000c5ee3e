"""How a trained one-layer classifier works (Li, Wang, Lu, Cui, Chen 2024): attention, neurons, pruning, baselines.

Every function takes the parameters of a `SoftmaxMLP` (with or without the
outer {"params": ...}) and a `ClassificationTask`, and where the data matter a
batch of `ClassificationPrompts`, so it applies to any trained model at any step
of training, from a script or a notebook:

  attention_statistics  the attention mass on the contexts that share the query's
                        relevant pattern, and the norms of W_Q p_query and W_K p_i
                        (same pattern / other pattern): docs/theory.md claim B4, attention
  neuron_statistics     each row of W_O W_V: magnitude, cosine of its first d_x
                        entries with the mean IDR pattern and of its last d_y with
                        q; `largest_neurons` picks the largest of each output sign
  prune                 zero a fraction of the rows of W_O: smallest, random or
                        largest first, ranked by the rows of W_O or of W_O W_V (claim 5)
  error_by_count        the ICL error with exactly k same-pattern contexts, for
                        every k = 0..l; `binomial_mixture` turns it into the error
                        when each context shares the query's pattern with
                        probability alpha' (a variant: the paper's alpha' is a fixed
                        fraction, floor(alpha' l), which scripts/classify_paper.py
                        measures); `sample_binomial_prompts` draws such prompts
  classical_predictions scikit-learn classifiers fit on each prompt's own
                        context and scored on its query (claim 6)

Pruning zeroes rows of W_O, as the paper prunes W_O: zeroing row i switches
neuron i off. It ranks the neurons by the norm of their row of W_O (`ranking='w_o'`)
or of W_O W_V (`'w_o_w_v'`, the neuron's direction in token space, the magnitude
the paper's mechanism is about): in the default run the rows of W_O have no small
group (norms 0.86-1.70) while those of W_O W_V have one.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.classification.softmax_mlp import SoftmaxMLP, neuron_weights, num_neurons, output_signs
from icl_theory.classification.task import (ClassificationPrompts, ClassificationTask, check_alpha, outcome_sums,
                                             prediction_errors, prompt_tokens, sample_prompts_by_count)
from icl_theory.engine.validation import ConfigError, check_choice, check_float, check_int, fail

PRUNING_STRATEGIES = ("smallest", "random", "largest")
PRUNING_RANKINGS = ("w_o", "w_o_w_v")  # which rows' norms rank the neurons
CLASSIFIERS = ("logistic_regression", "svm_rbf", "svm_linear", "1nn", "3nn")


def _unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
  return params.get("params", params)


def forward(params: Mapping[str, Any], task: ClassificationTask,
            prompts: ClassificationPrompts) -> tuple[jax.Array, jax.Array]:
  """F(P) (B,) and the query's attention over the contexts (B, l)."""
  params = _unwrap(params)
  model = SoftmaxMLP(m=num_neurons(params))  # the init fields do not enter apply
  return model.apply({"params": params}, *prompt_tokens(prompts, task.q))


def icl_errors(params: Mapping[str, Any], task: ClassificationTask, prompts: ClassificationPrompts) -> jax.Array:
  """Per prompt, the error of sign F(P) (B,)."""
  output_B, _ = forward(params, task, prompts)
  return prediction_errors(jnp.sign(output_B), prompts.y_query)


# --- attention --------------------------------------------------------------------------------------------------


def _masked_mean(values: jax.Array, mask: jax.Array) -> float:
  """Mean of values where mask holds; nan where it never does."""
  count = float(jnp.sum(mask))
  return float(jnp.sum(jnp.where(mask, values, 0.0)) / count) if count else math.nan


def attention_statistics(params: Mapping[str, Any], task: ClassificationTask,
                         prompts: ClassificationPrompts) -> dict[str, float]:
  """What the query attends to, averaged over the prompts.

  attention_same: total attention on the contexts that carry the query's
    relevant pattern (uniform attention gives their share, alpha'; the
    paper's mechanism, 1)
  query_norm: |W_Q p_query|
  key_norm_same, key_norm_other: |W_K p_i| over same-pattern / other contexts
  score_same, score_other: the mean attention score (W_K p_i)^T W_Q p_query of each
  """
  w = _unwrap(params)
  context_BxLxD, query_BxD = prompt_tokens(prompts, task.q)
  keys_BxLxD = context_BxLxD @ w["W_K"].T
  queries_BxD = query_BxD @ w["W_Q"].T
  _, attention_BxL = forward(params, task, prompts)
  scores_BxL = jnp.einsum("bld,bd->bl", keys_BxLxD, queries_BxD)
  key_norm_BxL = jnp.linalg.norm(keys_BxLxD, axis=-1)
  same_BxL = prompts.same_pattern.astype(bool)
  return {"attention_same": float(jnp.mean(jnp.sum(attention_BxL * same_BxL, axis=-1))),
          "query_norm": float(jnp.mean(jnp.linalg.norm(queries_BxD, axis=-1))),
          "key_norm_same": _masked_mean(key_norm_BxL, same_BxL),
          "key_norm_other": _masked_mean(key_norm_BxL, ~same_BxL),
          "score_same": _masked_mean(scores_BxL, same_BxL),
          "score_other": _masked_mean(scores_BxL, ~same_BxL)}


# --- neurons ----------------------------------------------------------------------------------------------------


class NeuronStatistics(NamedTuple):
  """Per neuron i (row i of W_O W_V), as float64 numpy arrays of shape (m,)."""
  magnitude: np.ndarray  # |(W_O W_V)[i]|
  cos_idr: np.ndarray    # cosine of its first d_x entries with the mean IDR pattern
  cos_q: np.ndarray      # cosine of its last d_y entries with q (+1: reads +q, -1: reads -q)
  sign: np.ndarray       # the sign of its output weight a_i: +1 or -1


def _cosines(rows_KxD: np.ndarray, direction_D: np.ndarray) -> np.ndarray:
  """Cosine of each row with `direction`; 0 for a zero row."""
  norms = np.linalg.norm(rows_KxD, axis=1) * np.linalg.norm(direction_D)
  return np.divide(rows_KxD @ direction_D, norms, out=np.zeros(rows_KxD.shape[0]), where=norms > 0)


def neuron_statistics(params: Mapping[str, Any], task: ClassificationTask) -> NeuronStatistics:
  """Magnitude and direction of every row of W_O W_V (docs/theory.md claim B4, the MLP)."""
  rows_MxD = np.asarray(neuron_weights(_unwrap(params)), np.float64)
  if rows_MxD.shape[1] != task.d_x + task.d_y:
    raise ConfigError(f"params have tokens of dimension {rows_MxD.shape[1]}, the task d_x + d_y = "
                      f"{task.d_x + task.d_y}: not the task the model was trained on")
  mean_idr_D = np.asarray(task.idr, np.float64).mean(0)
  return NeuronStatistics(magnitude=np.linalg.norm(rows_MxD, axis=1),
                          cos_idr=_cosines(rows_MxD[:, :task.d_x], mean_idr_D),
                          cos_q=_cosines(rows_MxD[:, task.d_x:], np.asarray(task.q, np.float64)),
                          sign=np.sign(np.asarray(output_signs(rows_MxD.shape[0]), np.float64)))


def largest_neurons(stats: NeuronStatistics, count: int) -> dict[str, np.ndarray]:
  """Indices of the `count` largest neurons (by magnitude, largest first) with a_i > 0 ('positive') and a_i < 0."""
  count = check_int("count", count, 1)
  out = {}
  for name, sign in (("positive", 1.0), ("negative", -1.0)):
    members = np.flatnonzero(stats.sign == sign)
    if count > members.size:
      raise fail("count", count, f"at most {members.size}, the neurons of each output sign")
    out[name] = members[np.argsort(-stats.magnitude[members], kind="stable")[:count]]
  return out


def neuron_summary(params: Mapping[str, Any], task: ClassificationTask, count: int) -> dict[str, float]:
  """For the `count` largest neurons of each output sign: mean magnitude, mean cos with the mean IDR pattern and with q.

  Also the mean magnitude of all neurons, for scale.
  """
  stats = neuron_statistics(params, task)
  out = {"magnitude_all": float(stats.magnitude.mean())}
  for name, index in largest_neurons(stats, count).items():
    out[f"{name}_magnitude"] = float(stats.magnitude[index].mean())
    out[f"{name}_cos_idr"] = float(stats.cos_idr[index].mean())
    out[f"{name}_cos_q"] = float(stats.cos_q[index].mean())
  return out


# --- pruning ----------------------------------------------------------------------------------------------------


def num_pruned(num_rows: int, rate: float) -> int:
  """rate * m rounded half up: how many rows `prune` zeroes."""
  rate = check_float("rate", rate, minimum=0.0)
  if rate > 1:
    raise fail("rate", rate, "a fraction in [0, 1]")
  return min(num_rows, math.floor(rate * num_rows + 0.5 + 1e-9))


def neuron_norms(params: Mapping[str, Any], ranking: str = "w_o") -> np.ndarray:
  """(m,) float64: the norm of each neuron's row of W_O (`ranking='w_o'`) or of W_O W_V (`'w_o_w_v'`)."""
  check_choice("ranking", ranking, PRUNING_RANKINGS)
  inner = _unwrap(params)
  rows_MxD = inner["W_O"] if ranking == "w_o" else neuron_weights(inner)
  return np.linalg.norm(np.asarray(rows_MxD, np.float64), axis=1)


def prune(params: Mapping[str, Any], rate: float, strategy: str, key: jax.Array | None = None,
          ranking: str = "w_o") -> dict[str, Any]:
  """The parameters with `num_pruned(m, rate)` rows of W_O zeroed; the other entries unchanged.

  strategy 'smallest' zeroes the rows of the neurons with the smallest norms
  (`neuron_norms` by `ranking`), 'largest' the largest, 'random' a uniformly random
  subset drawn from `key` (required). Ties in norm are broken by index. Keeps the
  {"params": ...} wrapper if given.
  """
  check_choice("strategy", strategy, PRUNING_STRATEGIES)
  inner = dict(_unwrap(params))
  w_o_MxD = np.asarray(inner["W_O"])
  m = w_o_MxD.shape[0]
  count = num_pruned(m, rate)
  norms_M = neuron_norms(inner, ranking)
  if strategy == "random":
    if key is None:
      raise ConfigError("strategy='random' needs a key")
    order = np.asarray(jax.random.permutation(key, m))
  else:
    order = np.argsort(norms_M if strategy == "smallest" else -norms_M, kind="stable")
  keep_M = np.ones(m, bool)
  keep_M[order[:count]] = False
  inner["W_O"] = jnp.asarray(np.where(keep_M[:, None], w_o_MxD, 0).astype(w_o_MxD.dtype))
  return {"params": inner} if "params" in params else inner


# --- error against the number of same-pattern contexts --------------------------------------------------------


class CountErrors(NamedTuple):
  """Monte Carlo figures of prompts with exactly k = counts[j] same-pattern contexts; arrays of shape (K,)."""
  counts: np.ndarray
  icl_error: np.ndarray
  icl_error_stderr: np.ndarray
  attention_same: np.ndarray
  majority_vote_error: np.ndarray


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _count_sums(params: Any, task: ClassificationTask, key: jax.Array, counts_K: jax.Array, num_samples: int,
                prompt_len: int, domain: str) -> jax.Array:
  """(K, 5): `outcome_sums` per count."""
  def sums(same):
    prompts = sample_prompts_by_count(key, task, num_samples, prompt_len, same, domain)
    return outcome_sums(*forward(params, task, prompts), prompts)

  return jax.lax.map(sums, counts_K)


def error_by_count(params: Mapping[str, Any], task: ClassificationTask, key: jax.Array, prompt_len: int,
                   num_samples: int, domain: str = "unseen", counts: Sequence[int] | None = None) -> CountErrors:
  """ICL error, attention mass and majority-vote error with exactly k of the l contexts on the query's pattern.

  `counts` defaults to every k = 0..l, k = 0 (no context carries the query's
  pattern) included. Every
  count sees the same prompts apart from which contexts carry which pattern
  (one key), so differences between counts are not sampling noise.
  """
  prompt_len = check_int("prompt_len", prompt_len, 1)
  num_samples = check_int("num_samples", num_samples, 2)
  counts_K = np.arange(prompt_len + 1) if counts is None else np.asarray(counts, np.int32).reshape(-1)
  if counts_K.size == 0 or counts_K.min() < 0 or counts_K.max() > prompt_len:
    raise fail("counts", counts, f"integers in [0, prompt_len={prompt_len}]")
  sums_Kx5 = np.asarray(_count_sums(_unwrap(params), task, key, jnp.asarray(counts_K, jnp.int32), num_samples,
                                    prompt_len, domain), np.float64)
  mean_K = sums_Kx5[:, 0] / num_samples
  variance_K = np.maximum(sums_Kx5[:, 1] / num_samples - mean_K**2, 0.0)
  return CountErrors(counts=counts_K, icl_error=mean_K, icl_error_stderr=np.sqrt(variance_K / (num_samples - 1)),
                     attention_same=sums_Kx5[:, 4] / num_samples, majority_vote_error=sums_Kx5[:, 2] / num_samples)


def binomial_weights(prompt_len: int, alpha: float) -> np.ndarray:
  """P(k of l contexts share the query's pattern), k = 0..l, when each does so independently with probability alpha."""
  prompt_len = check_int("prompt_len", prompt_len, 1)
  alpha = check_alpha("alpha", alpha)
  return np.array([math.comb(prompt_len, k) * alpha**k * (1 - alpha) ** (prompt_len - k)
                   for k in range(prompt_len + 1)])


def binomial_mixture(errors: CountErrors, alpha: float) -> dict[str, float]:
  """The figures of `errors` (which must hold every k = 0..l) for prompts with a Binomial(l, alpha) count.

  Exact in the weights. The standard error combines the per-count ones as if
  independent; `error_by_count` draws every count from one key, which correlates
  them positively, so take it as approximate.
  """
  prompt_len = errors.counts.size - 1
  if not np.array_equal(errors.counts, np.arange(prompt_len + 1)):
    raise fail("errors.counts", errors.counts.tolist(), "every count 0..prompt_len, in order")
  w_K = binomial_weights(prompt_len, alpha)
  return {"icl_error": float(w_K @ errors.icl_error),
          "icl_error_stderr": float(np.sqrt(w_K**2 @ errors.icl_error_stderr**2)),
          "attention_same": float(w_K @ errors.attention_same),
          "majority_vote_error": float(w_K @ errors.majority_vote_error),
          # A reader that errs only when no context carries the query's pattern.
          "ideal_error": float(w_K[0])}


def sample_binomial_prompts(key: jax.Array, task: ClassificationTask, batch: int, prompt_len: int, alpha: float,
                            domain: str = "unseen") -> ClassificationPrompts:
  """`batch` prompts in which each context shares the query's pattern independently with probability alpha.

  The count k ~ Binomial(l, alpha) may be 0 (no context carries the query's
  pattern) or l (every context has the query's label). Prompts are grouped by
  count (numpy arrays, not shuffled); given its count each is drawn as by
  `sample_prompts_by_count`.
  """
  batch = check_int("batch", batch, 1)
  prompt_len = check_int("prompt_len", prompt_len, 1)
  alpha = check_alpha("alpha", alpha)
  key_counts, key_prompts = jax.random.split(key)
  counts_B = np.asarray(jnp.sum(jax.random.uniform(key_counts, (batch, prompt_len)) < alpha, axis=1))
  groups = [jax.tree.map(np.asarray, sample_prompts_by_count(jax.random.fold_in(key_prompts, int(k)), task,
                                                             int(np.sum(counts_B == k)), prompt_len, jnp.int32(k),
                                                             domain))
            for k in np.unique(counts_B)]
  return jax.tree.map(lambda *parts: np.concatenate(parts), *groups)


# --- classical classifiers on each prompt's own context --------------------------------------------------------


def make_classifier(name: str):
  """A fresh scikit-learn classifier with its default hyperparameters (C = 1; gamma = 'scale' for the RBF kernel)."""
  from sklearn.linear_model import LogisticRegression  # imported here: only these baselines need scikit-learn
  from sklearn.neighbors import KNeighborsClassifier
  from sklearn.svm import SVC
  check_choice("classifier", name, CLASSIFIERS)
  return {"logistic_regression": LogisticRegression, "svm_rbf": lambda: SVC(kernel="rbf"),
          "svm_linear": lambda: SVC(kernel="linear"), "1nn": lambda: KNeighborsClassifier(n_neighbors=1),
          "3nn": lambda: KNeighborsClassifier(n_neighbors=3)}[name]()


def classical_predictions(prompts: ClassificationPrompts,
                          names: Sequence[str] = CLASSIFIERS) -> dict[str, np.ndarray]:
  """Per classifier, its +-1 prediction for each prompt's query after fitting on that prompt's contexts (x_i, y_i).

  A context whose labels are all the same predicts that label (nothing to fit).
  k-NN with fewer than k contexts uses all of them. scikit-learn breaks a tied
  k-NN vote towards the smaller label, -1. The fits run with one BLAS/OpenMP
  thread (threadpoolctl, a scikit-learn dependency): on a few busy cores, thread
  pools on problems this small made each fit 10-50 times slower.
  """
  from threadpoolctl import threadpool_limits
  for name in names:
    check_choice("classifier", name, CLASSIFIERS)
  x_BxLxD, y_BxL = np.asarray(prompts.x, np.float64), np.asarray(prompts.y)
  x_query_BxD = np.asarray(prompts.x_query, np.float64)
  out = {name: np.empty(y_BxL.shape[0]) for name in names}
  with threadpool_limits(limits=1):
    for b, (x_LxD, y_L, x_D) in enumerate(zip(x_BxLxD, y_BxL, x_query_BxD)):
      for name, prediction in _predict_query(x_LxD, y_L, x_D, names).items():
        out[name][b] = prediction
  return out


def _predict_query(x_LxD: np.ndarray, y_L: np.ndarray, x_D: np.ndarray, names: Sequence[str]) -> dict[str, float]:
  """Each classifier's prediction for one query, fit on one prompt's contexts."""
  labels = np.unique(y_L)
  if labels.size == 1:
    return {name: float(labels[0]) for name in names}
  out = {}
  for name in names:
    classifier = make_classifier(name)
    if name.endswith("nn"):
      classifier.set_params(n_neighbors=min(classifier.n_neighbors, y_L.size))
    out[name] = float(classifier.fit(x_LxD, y_L).predict(x_D[None])[0])
  return out
