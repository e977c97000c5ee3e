"""In-context binary classification (Li, Wang, Lu, Cui, Chen 2024): the task and its prompt sampler.

docs/theory.md Part B fixes the instantiation. Orthonormal patterns in R^d_x: M1
in-domain-relevant (IDR) mu_1..mu_M1 and M2 in-domain-irrelevant (IDI)
nu_1..nu_M2. An input is x = mu + kappa nu, kappa ~ U[-kappa_max, kappa_max],
nu a random irrelevant pattern. A task is an ordered pair (a, b), a != b: mu_a
means label +1, mu_b label -1. Training tasks are (a, a+1 mod M1) and their
reverses, so every IDR pattern is seen with both labels; every other ordered
pair is an unseen task. Out of domain, the relevant patterns are the ODR
patterns mu'_j = sum_k c_jk mu_k (c_jk >= 0 on disjoint groups of the mu_k,
summing to s1; the tasks are all their ordered pairs) and the irrelevant ones
are ODI patterns: random unit vectors in the span of the IDI patterns.

A prompt of length l holds exactly `num_same(l, alpha)` contexts that carry the
query's relevant pattern (and its label), at random positions; the others carry
the task's other pattern. `prompt_tokens` embeds it as p_i = (x_i, y_i q) and
p_query = (x_query, 0).

`ClassificationTask` is a JAX pytree: every pattern table, the pair lists,
kappa_max, s1 and the seed are its array leaves; only the sizes are static.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_theory.engine import sharding
from icl_theory.engine.validation import ConfigError, check_choice, check_float, check_int, fail

DOMAINS = ("train", "unseen", "ood")
# The patterns' key is a fixed offspring of the seed's root key, apart from the
# keys that trainer.fit derives (init, batches) and from the evaluation's.
_PATTERN_STREAM = 7_919


class ClassificationPrompts(NamedTuple):
  """A batch of B prompts with l contexts each."""
  x: jax.Array            # (B, l, d_x) context inputs
  y: jax.Array            # (B, l) context labels, +-1
  x_query: jax.Array      # (B, d_x)
  y_query: jax.Array      # (B,) +-1
  same_pattern: jax.Array  # (B, l) bool: the context carries the query's relevant pattern


def training_pairs(num_relevant: int) -> np.ndarray:
  """(a, a+1 mod M1) and its reverse for every a, without repeats: (T, 2) int32."""
  pairs = {(a, (a + 1) % num_relevant) for a in range(num_relevant)}
  pairs |= {(b, a) for a, b in pairs}
  return np.array(sorted(pairs), np.int32).reshape(-1, 2)


def all_pairs(num_patterns: int) -> np.ndarray:
  """Every ordered pair (a, b), a != b: (n (n - 1), 2) int32."""
  return np.array([(a, b) for a in range(num_patterns) for b in range(num_patterns) if a != b],
                  np.int32).reshape(-1, 2)


def ood_groups(num_relevant: int, num_ood: int) -> list[range]:
  """Disjoint, contiguous groups of the IDR indices, one per ODR pattern, sizes differing by at most 1."""
  bounds = [round(j * num_relevant / num_ood) for j in range(num_ood + 1)]
  return [range(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def odr_coefficients(num_relevant: int, num_ood: int, s1: float) -> np.ndarray:
  """c_jk (M1', M1): s1 spread evenly over the j-th group of `ood_groups`, 0 elsewhere."""
  coefficients = np.zeros((num_ood, num_relevant))
  for j, group in enumerate(ood_groups(num_relevant, num_ood)):
    coefficients[j, list(group)] = s1 / len(group)
  return coefficients


def check_alpha(field: str, value) -> float:
  """A fraction in (0, 1]: the share of contexts that carry the query's pattern."""
  try:
    alpha = check_float(field, value, minimum=0.0, strict=True)
  except ConfigError:
    alpha = None
  if alpha is None or alpha > 1:
    raise fail(field, value, "a fraction in (0, 1]")
  return alpha


def num_same(prompt_len: int, alpha: float, fields: tuple[str, str] = ("prompt_len", "alpha")) -> int:
  """How many of the l contexts share the query's pattern: alpha * l rounded half up, and at least 1.

  At least one, so that alpha > 0 always puts the query's pattern in the
  context (what the paper's mechanism reads); the fraction is then exact
  whenever alpha * l is an integer and within 1/(2l) of alpha otherwise.
  `fields` name the two values in a ConfigError.
  """
  prompt_len = check_int(fields[0], prompt_len, 1)
  alpha = check_alpha(fields[1], alpha)
  # The 1e-9 keeps a half that float arithmetic puts just below it (0.35 * 10 = 3.4999...) rounding up.
  return min(prompt_len, max(1, math.floor(alpha * prompt_len + 0.5 + 1e-9)))


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationTask:
  """The patterns and task split of one run, drawn from `seed`; validated on construction, before any tracing."""
  M1: int = 6                   # IDR patterns
  M2: int = 24                  # IDI patterns
  d_x: int = 30                 # input dimension, >= M1 + M2
  d_y: int = 10                 # label-embedding dimension
  kappa_max: float = 0.5        # kappa ~ U[-kappa_max, kappa_max] scales the irrelevant pattern
  s1: float = 1.0               # coefficient sum of each ODR pattern
  num_ood_patterns: int = 3     # M1': ODR patterns, 2..M1
  seed: int = 0
  # Drawn in __post_init__ (float32 / int32 arrays):
  idr: np.ndarray = dataclasses.field(init=False, repr=False)             # (M1, d_x) orthonormal rows
  idi: np.ndarray = dataclasses.field(init=False, repr=False)             # (M2, d_x) orthonormal, and to idr
  q: np.ndarray = dataclasses.field(init=False, repr=False)               # (d_y,) unit label embedding
  train_pairs: np.ndarray = dataclasses.field(init=False, repr=False)     # (T, 2) ordered pairs (a, b)
  unseen_pairs: np.ndarray = dataclasses.field(init=False, repr=False)    # (U, 2) the other ordered pairs
  odr_coefficients: np.ndarray = dataclasses.field(init=False, repr=False)  # (M1', M1), rows sum to s1
  odr: np.ndarray = dataclasses.field(init=False, repr=False)             # (M1', d_x) = odr_coefficients @ idr
  odi: np.ndarray = dataclasses.field(init=False, repr=False)             # (M2, d_x) unit, in span(idi)
  ood_pairs: np.ndarray = dataclasses.field(init=False, repr=False)       # (M1' (M1' - 1), 2)

  def __post_init__(self):
    m1 = check_int("M1", self.M1, 2)
    m2 = check_int("M2", self.M2, 1)
    d_x = check_int("d_x", self.d_x, 1)
    if d_x < m1 + m2:
      raise fail("d_x", self.d_x, f"at least M1 + M2 = {m1 + m2}, so that the patterns can be orthonormal")
    d_y = check_int("d_y", self.d_y, 1)
    kappa_max = check_float("kappa_max", self.kappa_max, minimum=0.0)
    s1 = check_float("s1", self.s1, minimum=0.0, strict=True)
    num_ood = check_int("num_ood_patterns", self.num_ood_patterns, 2)
    if num_ood > m1:
      raise fail("num_ood_patterns", self.num_ood_patterns,
                 f"at most M1 = {m1}, so that the ODR patterns have disjoint supports among the IDR patterns")
    seed = check_int("seed", self.seed, 0)

    # Orthonormal patterns: the Q factor of a Gaussian matrix, in float64 so they are orthonormal to float32 precision.
    k_basis, k_q, k_odi = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), _PATTERN_STREAM), 3)
    gaussian = np.asarray(jax.random.normal(k_basis, (d_x, m1 + m2)), np.float64)
    basis_DxP = np.linalg.qr(gaussian)[0]
    idr_M1xD, idi_M2xD = basis_DxP[:, :m1].T, basis_DxP[:, m1:].T
    q = np.asarray(jax.random.normal(k_q, (d_y,)), np.float64)
    q /= np.linalg.norm(q)
    coefficients = odr_coefficients(m1, num_ood, s1)
    mix = np.asarray(jax.random.normal(k_odi, (m2, m2)), np.float64)
    odi_M2xD = mix @ idi_M2xD
    odi_M2xD /= np.linalg.norm(odi_M2xD, axis=1, keepdims=True)
    train = training_pairs(m1)
    seen = {tuple(p) for p in train.tolist()}
    unseen = np.array([p for p in all_pairs(m1).tolist() if tuple(p) not in seen], np.int32).reshape(-1, 2)

    set_ = lambda name, value: object.__setattr__(self, name, value)
    for name, value in (("M1", m1), ("M2", m2), ("d_x", d_x), ("d_y", d_y), ("num_ood_patterns", num_ood)):
      set_(name, value)
    set_("kappa_max", np.float32(kappa_max))
    set_("s1", np.float32(s1))
    set_("seed", np.int32(seed))
    set_("idr", idr_M1xD.astype(np.float32))
    set_("idi", idi_M2xD.astype(np.float32))
    set_("q", q.astype(np.float32))
    set_("train_pairs", train)
    set_("unseen_pairs", unseen)
    set_("odr_coefficients", coefficients.astype(np.float32))
    set_("odr", (coefficients @ idr_M1xD).astype(np.float32))
    set_("odi", odi_M2xD.astype(np.float32))
    set_("ood_pairs", all_pairs(num_ood))

  _LEAVES = ("kappa_max", "s1", "seed", "idr", "idi", "q", "train_pairs", "unseen_pairs", "odr_coefficients",
             "odr", "odi", "ood_pairs")
  _STATIC = ("M1", "M2", "d_x", "d_y", "num_ood_patterns")

  def tree_flatten(self):
    return tuple(getattr(self, n) for n in self._LEAVES), tuple(getattr(self, n) for n in self._STATIC)

  @classmethod
  def tree_unflatten(cls, static, leaves):
    # Leaves may be tracers or batched arrays here: skip validation on purpose.
    task = object.__new__(cls)
    for name, value in zip((*cls._LEAVES, *cls._STATIC), (*leaves, *static)):
      object.__setattr__(task, name, value)
    return task

  def with_s1(self, s1: float) -> ClassificationTask:
    """The same patterns and split, with the ODR coefficients rescaled to sum to `s1`: the same pytree structure."""
    s1 = check_float("s1", s1, minimum=0.0, strict=True)
    coefficients = odr_coefficients(self.M1, self.num_ood_patterns, s1)
    leaves, static = self.tree_flatten()
    task = self.tree_unflatten(static, leaves)
    object.__setattr__(task, "s1", np.float32(s1))
    object.__setattr__(task, "odr_coefficients", coefficients.astype(np.float32))
    object.__setattr__(task, "odr", (coefficients @ np.asarray(self.idr, np.float64)).astype(np.float32))
    return task

  def pairs(self, domain: str) -> np.ndarray:
    """The ordered pairs (tasks) of a domain: 'train', 'unseen' or 'ood'."""
    check_choice("domain", domain, DOMAINS)
    return {"train": self.train_pairs, "unseen": self.unseen_pairs, "ood": self.ood_pairs}[domain]


def _patterns(task: ClassificationTask, domain: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The domain's pairs, relevant and irrelevant pattern tables, as jax arrays (they are indexed by tracers)."""
  tables = (task.ood_pairs, task.odr, task.odi) if domain == "ood" else (task.pairs(domain), task.idr, task.idi)
  return tuple(jnp.asarray(t) for t in tables)


def _uniform_index(u: jax.Array, n: int) -> jax.Array:
  """floor(u n), an index uniform on 0..n-1 for u ~ U[0, 1)."""
  return jnp.minimum((u * n).astype(jnp.int32), n - 1)


def _sample_one(key: jax.Array, task: ClassificationTask, pairs_Px2: jax.Array, relevant_RxD: jax.Array,
                irrelevant_IxD: jax.Array, prompt_len: int, same: int | jax.Array) -> ClassificationPrompts:
  # Every random choice comes from one uniform draw: each jax.random call adds a threefry block
  # to the program, and a call per choice made the sampler several times slower to compile.
  # Rows 0..l-1: the contexts, row l: the query (columns: position, kappa, irrelevant pattern);
  # row l+1: the prompt's task and the query's side.
  u_Tx3 = jax.random.uniform(key, (prompt_len + 2, 3))
  u_pair, u_side, _ = u_Tx3[prompt_len + 1]
  u_Tx3 = u_Tx3[:prompt_len + 1]
  a, b = pairs_Px2[_uniform_index(u_pair, pairs_Px2.shape[0])]
  query_is_a = u_side < 0.5
  y_query = jnp.where(query_is_a, 1.0, -1.0)
  own, other = jnp.where(query_is_a, a, b), jnp.where(query_is_a, b, a)
  # Exactly `same` contexts carry the query's pattern: the argsort of iid uniforms is a uniform
  # random permutation, and the positions it maps below `same` are a uniform random subset.
  same_pattern_L = jnp.argsort(u_Tx3[:prompt_len, 0]) < same
  relevant_T = jnp.append(jnp.where(same_pattern_L, own, other), own)
  kappa_T = (2.0 * u_Tx3[:, 1] - 1.0) * task.kappa_max
  nu_T = _uniform_index(u_Tx3[:, 2], irrelevant_IxD.shape[0])
  x_TxD = relevant_RxD[relevant_T] + kappa_T[:, None] * irrelevant_IxD[nu_T]
  y_L = jnp.where(same_pattern_L, y_query, -y_query)
  return ClassificationPrompts(x=x_TxD[:prompt_len], y=y_L, x_query=x_TxD[prompt_len], y_query=y_query,
                               same_pattern=same_pattern_L)


def sample_prompts(key: jax.Array, task: ClassificationTask, batch: int, prompt_len: int, alpha: float,
                   domain: str = "train") -> ClassificationPrompts:
  """`batch` independent prompts of `domain`'s tasks. Jit with `static_argnums=(2, 3, 4, 5)`.

  Each prompt draws its task uniformly from the domain's pairs, its query's side
  with probability 1/2, and holds exactly `num_same(prompt_len, alpha)` contexts
  with the query's pattern, at uniformly random positions.
  """
  return sample_prompts_by_count(key, task, batch, prompt_len, num_same(prompt_len, alpha), domain)


def sample_prompts_by_count(key: jax.Array, task: ClassificationTask, batch: int, prompt_len: int,
                            same: int | jax.Array, domain: str = "train") -> ClassificationPrompts:
  """As `sample_prompts`, with the number of same-pattern contexts given (1..prompt_len); it may be traced.

  One compiled program then serves every alpha at a prompt length.
  """
  batch = check_int("batch", batch, 1)
  prompt_len = check_int("prompt_len", prompt_len, 1)
  check_choice("domain", domain, DOMAINS)
  if isinstance(same, (int, np.integer)) and not 1 <= same <= prompt_len:
    raise fail("same", same, f"an integer in [1, prompt_len={prompt_len}]")
  pairs_Px2, relevant_RxD, irrelevant_IxD = _patterns(task, domain)
  if pairs_Px2.shape[0] == 0:
    raise ConfigError(f"domain={domain!r} is not allowed: this task has no {domain} pairs "
                      f"(M1={task.M1}; unseen pairs need M1 >= 4)")
  keys = jax.random.split(key, batch)
  sample = lambda k: _sample_one(k, task, pairs_Px2, relevant_RxD, irrelevant_IxD, prompt_len, same)
  return sharding.shard_batch(jax.vmap(sample)(keys))


def prompt_tokens(prompts: ClassificationPrompts, q_Y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Context tokens (x_i, y_i q): (B, l, d_x + d_y); query token (x_query, 0): (B, d_x + d_y)."""
  labels_BxLxY = prompts.y[..., None] * q_Y
  context_BxLxD = jnp.concatenate([prompts.x, labels_BxLxY.astype(prompts.x.dtype)], axis=-1)
  query_BxD = jnp.concatenate([prompts.x_query, jnp.zeros(prompts.x_query.shape[:-1] + q_Y.shape, prompts.x.dtype)],
                              axis=-1)
  return context_BxLxD, query_BxD


def majority_vote(prompts: ClassificationPrompts) -> jax.Array:
  """The sign of the context labels' sum (0 on a tie): the baseline that needs no pattern at all."""
  return jnp.sign(prompts.y.sum(axis=-1))


def prediction_errors(prediction_B: jax.Array, y_B: jax.Array) -> jax.Array:
  """Per prompt: 0 when right, 1 when wrong, 1/2 for a prediction of 0 (a fair coin's expected error)."""
  return jnp.where(prediction_B == 0, 0.5, (prediction_B != y_B).astype(jnp.float32))


def outcome_sums(output_B: jax.Array, attention_BxL: jax.Array, prompts: ClassificationPrompts) -> jax.Array:
  """(5,) sums over the batch: ICL error, its square, majority-vote error, its square, attention on same-pattern contexts.

  The error of sign F(P) and of the labels' majority (`prediction_errors`); float32
  sums of halves and ones are exact below 2^23 prompts.
  """
  error_B = prediction_errors(jnp.sign(output_B), prompts.y_query)
  vote_B = prediction_errors(majority_vote(prompts), prompts.y_query)
  mass_B = jnp.sum(attention_BxL * prompts.same_pattern, axis=-1)
  return jnp.stack([error_B, error_B**2, vote_B, vote_B**2, mass_B], axis=-1).sum(0)
