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

Which IDR patterns an ODR pattern mixes is `ood_construction` (the paper fixes
only c_jk >= 0 and sum_k c_jk = S1, so each is our choice):
  training_pairs      contiguous groups {0, 1}, {2, 3}, ...: for M1' = M1/2 each group is
                      a training pair, whose two patterns training teaches to repel
                      each other in attention (a caveat of the trained model, measured)
  non_training_pairs  strided groups {j, j + M1', j + 2 M1', ...} ({0,3}, {1,4}, {2,5}), or
                      if one of those holds a training pair another partition with none
                      (a ConfigError when the sizes make that impossible)
  random              per draw, a random partition of the IDR patterns into M1' groups
                      (sizes as contiguous) with Dirichlet(1) weights times S1; the
                      `ood_draws` draws are stacked, so a uniform draw of an ODR task
                      averages the error over them
Every construction stores `ood_draws` blocks of M1' ODR patterns (the deterministic
ones repeat theirs), so all three have the same shapes and share compiled programs.

A prompt of length l holds exactly `num_same(l, alpha) = floor(alpha l)` contexts
that carry the query's relevant pattern (and its label), at random positions,
possibly none; the others carry the task's other pattern. Optional noise (our
choice: the paper's is unknown): each context label flipped with probability
`label_noise`, and N(0, feature_noise^2) added to every coordinate of every input
(contexts and query). `prompt_tokens` embeds a prompt as p_i = (x_i, y_i q) and
p_query = (x_query, 0).

`ClassificationTask` is a JAX pytree: every pattern table, the pair lists,
kappa_max, s1, the construction's index and the seed are its array leaves; the
sizes and the noise levels are static.
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
OOD_CONSTRUCTIONS = ("training_pairs", "non_training_pairs", "random")
# The patterns' key is a fixed offspring of the seed's root key, apart from the
# keys that trainer.fit derives (init, batches) and from the evaluation's.
_PATTERN_STREAM = 7_919
_RANDOM_ODR_STREAM = 7_927  # the random ODR construction's draws: another offspring of the seed's root key


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


def strided_groups(num_relevant: int, num_ood: int) -> list[list[int]]:
  """Groups {j, j + M1', j + 2 M1', ...} of the IDR indices: members at least M1' apart, so none is a training pair
  when M1' >= 2 and the wrap-around (M1 - 1 and 0) does not fall into one group."""
  return [list(range(j, num_relevant, num_ood)) for j in range(num_ood)]


def _contains_training_pair(group: list[int], num_relevant: int) -> bool:
  return any((b - a) % num_relevant in (1, num_relevant - 1) for a in group for b in group if a != b)


def non_training_groups(num_relevant: int, num_ood: int) -> list[list[int]] | None:
  """M1' disjoint groups of the IDR indices (sizes as `ood_groups`), none holding a training pair (a, a+1 mod M1):
  the strided groups when they qualify ({0, 3}, {1, 4}, {2, 5} for M1 = 6, M1' = 3), else the first such
  partition in lexicographic order; None when there is none."""
  strided = strided_groups(num_relevant, num_ood)
  if not any(_contains_training_pair(g, num_relevant) for g in strided):
    return strided
  sizes = [len(g) for g in ood_groups(num_relevant, num_ood)]
  groups: list[list[int]] = [[] for _ in sizes]

  def place(k: int) -> bool:  # backtracking: put index k into a group with room and no neighbour of k
    if k == num_relevant:
      return True
    for group, size in zip(groups, sizes):
      if len(group) < size and not _contains_training_pair(group + [k], num_relevant):
        group.append(k)
        if place(k + 1):
          return True
        group.pop()
      if not group:  # empty groups are interchangeable: trying one is enough
        break
    return False

  return groups if place(0) else None


def ood_coefficients(construction: str, num_relevant: int, num_ood: int, draws: int, s1: float,
                     seed: int) -> np.ndarray:
  """c (draws * M1', M1), float64: `draws` blocks of M1' ODR patterns, each row >= 0 summing to s1, the rows of a
  block on disjoint groups of the IDR patterns (see the module docstring for the constructions).

  The random construction's draws come from `seed` and do not depend on s1 (the
  coefficients scale with it), so changing s1 moves the same patterns.
  """
  check_choice("ood_construction", construction, OOD_CONSTRUCTIONS)
  draws = check_int("ood_draws", draws, 1)
  if construction == "training_pairs":
    return np.tile(odr_coefficients(num_relevant, num_ood, s1), (draws, 1))
  if construction == "non_training_pairs":
    groups = non_training_groups(num_relevant, num_ood)
    if groups is None:
      raise fail("ood_construction", construction,
                 f"possible only when M1={num_relevant} patterns split into num_ood_patterns={num_ood} groups none of "
                 f"which holds a training pair (a, a+1 mod M1); choose another num_ood_patterns or construction")
    block = np.zeros((num_ood, num_relevant))
    for j, group in enumerate(groups):
      block[j, group] = s1 / len(group)
    return np.tile(block, (draws, 1))
  key = jax.random.fold_in(jax.random.PRNGKey(seed), _RANDOM_ODR_STREAM)
  k_perm, k_weight = jax.random.split(key)
  sizes = [len(g) for g in ood_groups(num_relevant, num_ood)]
  coefficients = np.zeros((draws * num_ood, num_relevant))
  for d in range(draws):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(k_perm, d), num_relevant))
    # Dirichlet(1, ..., 1) weights: normalised Exp(1) draws (uniform on the simplex).
    exponential = -np.log(np.asarray(jax.random.uniform(jax.random.fold_in(k_weight, d), (num_relevant,),
                                                        minval=1e-12, maxval=1.0), np.float64))
    start = 0
    for j, size in enumerate(sizes):
      group = order[start:start + size]
      coefficients[d * num_ood + j, group] = s1 * exponential[group] / exponential[group].sum()
      start += size
  return coefficients


def block_pairs(num_ood: int, draws: int) -> np.ndarray:
  """Every ordered pair within each block of M1' ODR patterns: (draws * M1' (M1' - 1), 2) int32."""
  return np.concatenate([all_pairs(num_ood) + d * num_ood for d in range(draws)]).astype(np.int32)


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
  """How many of the l contexts share the query's pattern: floor(alpha * l), which is 0 when l < 1/alpha.

  The paper's alpha' is a fixed fraction and its prompt-length condition is
  l >= 1/alpha': below it no context need carry the query's pattern, and the
  count may be 0 here so that side can be seen. `fields` name the two values in
  a ConfigError.
  """
  prompt_len = check_int(fields[0], prompt_len, 1)
  alpha = check_alpha(fields[1], alpha)
  # The 1e-9 keeps an integer that float arithmetic puts just below it (0.7 * 10 = 6.9999...) at that integer.
  return min(prompt_len, math.floor(alpha * prompt_len + 1e-9))


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
  ood_construction: str = "training_pairs"  # which IDR patterns each ODR pattern mixes (OOD_CONSTRUCTIONS)
  ood_draws: int = 1            # blocks of M1' ODR patterns (the random construction's draws)
  label_noise: float = 0.0      # probability that a context's label is flipped (our choice of noise)
  feature_noise: float = 0.0    # std of Gaussian noise on every input coordinate (our choice of noise)
  # Drawn in __post_init__ (float32 / int32 arrays):
  idr: np.ndarray = dataclasses.field(init=False, repr=False)             # (M1, d_x) orthonormal rows
  idi: np.ndarray = dataclasses.field(init=False, repr=False)             # (M2, d_x) orthonormal, and to idr
  q: np.ndarray = dataclasses.field(init=False, repr=False)               # (d_y,) unit label embedding
  train_pairs: np.ndarray = dataclasses.field(init=False, repr=False)     # (T, 2) ordered pairs (a, b)
  unseen_pairs: np.ndarray = dataclasses.field(init=False, repr=False)    # (U, 2) the other ordered pairs
  odr_coefficients: np.ndarray = dataclasses.field(init=False, repr=False)  # (draws M1', M1), rows sum to s1
  odr: np.ndarray = dataclasses.field(init=False, repr=False)             # (draws M1', d_x) = odr_coefficients @ idr
  odi: np.ndarray = dataclasses.field(init=False, repr=False)             # (M2, d_x) unit, in span(idi)
  ood_pairs: np.ndarray = dataclasses.field(init=False, repr=False)       # (draws M1' (M1' - 1), 2), within blocks
  ood_construction_index: np.ndarray = dataclasses.field(init=False, repr=False)  # () int32 into OOD_CONSTRUCTIONS

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
    construction = check_choice("ood_construction", self.ood_construction, OOD_CONSTRUCTIONS)
    draws = check_int("ood_draws", self.ood_draws, 1)
    label_noise = check_float("label_noise", self.label_noise, minimum=0.0)
    if label_noise > 0.5:
      raise fail("label_noise", self.label_noise,
                 "a probability in [0, 0.5] (above 1/2 the labels mean their opposite)")
    feature_noise = check_float("feature_noise", self.feature_noise, minimum=0.0)

    # Orthonormal patterns: the Q factor of a Gaussian matrix, in float64 so they are orthonormal to float32 precision.
    k_basis, k_q, k_odi = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), _PATTERN_STREAM), 3)
    gaussian = np.asarray(jax.random.normal(k_basis, (d_x, m1 + m2)), np.float64)
    basis_DxP = np.linalg.qr(gaussian)[0]
    idr_M1xD, idi_M2xD = basis_DxP[:, :m1].T, basis_DxP[:, m1:].T
    q = np.asarray(jax.random.normal(k_q, (d_y,)), np.float64)
    q /= np.linalg.norm(q)
    coefficients = ood_coefficients(construction, m1, num_ood, draws, s1, seed)
    mix = np.asarray(jax.random.normal(k_odi, (m2, m2)), np.float64)
    odi_M2xD = mix @ idi_M2xD
    odi_M2xD /= np.linalg.norm(odi_M2xD, axis=1, keepdims=True)
    train = training_pairs(m1)
    seen = {tuple(p) for p in train.tolist()}
    unseen = np.array([p for p in all_pairs(m1).tolist() if tuple(p) not in seen], np.int32).reshape(-1, 2)

    set_ = lambda name, value: object.__setattr__(self, name, value)
    for name, value in (("M1", m1), ("M2", m2), ("d_x", d_x), ("d_y", d_y), ("num_ood_patterns", num_ood),
                        ("ood_construction", construction), ("ood_draws", draws), ("label_noise", label_noise),
                        ("feature_noise", feature_noise)):
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
    set_("ood_pairs", block_pairs(num_ood, draws))
    set_("ood_construction_index", np.int32(OOD_CONSTRUCTIONS.index(construction)))

  # The construction's name is carried by its index (a leaf): tasks of every construction share one program.
  _LEAVES = ("kappa_max", "s1", "seed", "idr", "idi", "q", "train_pairs", "unseen_pairs", "odr_coefficients",
             "odr", "odi", "ood_pairs", "ood_construction_index")
  _STATIC = ("M1", "M2", "d_x", "d_y", "num_ood_patterns", "ood_draws", "label_noise", "feature_noise")

  def tree_flatten(self):
    return tuple(getattr(self, n) for n in self._LEAVES), tuple(getattr(self, n) for n in self._STATIC)

  @classmethod
  def tree_unflatten(cls, static, leaves):
    # Leaves may be tracers or batched arrays here: skip validation on purpose.
    task = object.__new__(cls)
    for name, value in zip((*cls._LEAVES, *cls._STATIC), (*leaves, *static)):
      object.__setattr__(task, name, value)
    index = task.ood_construction_index
    if isinstance(index, (int, np.integer)) or (isinstance(index, np.ndarray) and index.ndim == 0):
      object.__setattr__(task, "ood_construction", OOD_CONSTRUCTIONS[int(index)])
    return task

  def _replace(self, **values) -> ClassificationTask:
    leaves, static = self.tree_flatten()
    task = self.tree_unflatten(static, leaves)
    for name, value in values.items():
      object.__setattr__(task, name, value)
    return task

  def with_s1(self, s1: float) -> ClassificationTask:
    """The same patterns and split, with the ODR coefficients rescaled to sum to `s1`: the same pytree structure."""
    return self.with_ood(self.ood_construction, s1)

  def with_ood(self, construction: str, s1: float | None = None) -> ClassificationTask:
    """The same patterns and split, with the ODR patterns of `construction` at `s1` (default: the task's):
    the same pytree structure and shapes, so the same compiled programs."""
    construction = check_choice("ood_construction", construction, OOD_CONSTRUCTIONS)
    s1 = float(self.s1) if s1 is None else check_float("s1", s1, minimum=0.0, strict=True)
    coefficients = ood_coefficients(construction, self.M1, self.num_ood_patterns, self.ood_draws, s1, int(self.seed))
    return self._replace(s1=np.float32(s1), odr_coefficients=coefficients.astype(np.float32),
                         odr=(coefficients @ np.asarray(self.idr, np.float64)).astype(np.float32),
                         ood_construction=construction,
                         ood_construction_index=np.int32(OOD_CONSTRUCTIONS.index(construction)))

  def with_noise(self, label_noise: float = 0.0, feature_noise: float = 0.0) -> ClassificationTask:
    """The same patterns and split with other noise levels (static: a new program); e.g. noisy test prompts for a
    model trained without noise."""
    label_noise = check_float("label_noise", label_noise, minimum=0.0)
    if label_noise > 0.5:
      raise fail("label_noise", label_noise, "a probability in [0, 0.5]")
    return self._replace(label_noise=label_noise,
                         feature_noise=check_float("feature_noise", feature_noise, minimum=0.0))

  def pairs(self, domain: str) -> np.ndarray:
    """The ordered pairs (tasks) of a domain: 'train', 'unseen' or 'ood'."""
    check_choice("domain", domain, DOMAINS)
    return {"train": self.train_pairs, "unseen": self.unseen_pairs, "ood": self.ood_pairs}[domain]


def _patterns(task: ClassificationTask, domain: str | jax.Array
              ) -> tuple[jax.Array, jax.Array | int, jax.Array, jax.Array, jax.Array | int]:
  """The domain's pairs and their count, its relevant pattern table, its irrelevant table and their count.

  `domain`: a name of DOMAINS (static: the domain's own tables), or its index there as
  an int32 array, traced where one program serves every domain: each table is then
  the domains' tables padded to the longest and stacked, the domain's picked by the
  index. Only the first `count` rows are ever drawn (`_uniform_index`), and the
  multiply behind each index is the same whether the count is a constant or
  traced, so both forms draw the same prompts to the bit.
  """
  if isinstance(domain, str):
    tables = (task.ood_pairs, task.odr, task.odi) if domain == "ood" else (task.pairs(domain), task.idr, task.idi)
    pairs_Px2, relevant_RxD, irrelevant_IxD = (jnp.asarray(t) for t in tables)
    return pairs_Px2, pairs_Px2.shape[0], relevant_RxD, irrelevant_IxD, irrelevant_IxD.shape[0]

  def pick(*tables):  # in the order of DOMAINS
    rows = max(t.shape[0] for t in tables)
    padded = [jnp.pad(jnp.asarray(t), [(0, rows - t.shape[0])] + [(0, 0)] * (t.ndim - 1)) for t in tables]
    return jnp.stack(padded)[domain]

  count = lambda *tables: jnp.asarray([t.shape[0] for t in tables], jnp.int32)[domain]
  return (pick(task.train_pairs, task.unseen_pairs, task.ood_pairs),
          count(task.train_pairs, task.unseen_pairs, task.ood_pairs),
          pick(task.idr, task.idr, task.odr), pick(task.idi, task.idi, task.odi), count(task.idi, task.idi, task.odi))


def check_domain(task: ClassificationTask, domain: str) -> str:
  """`domain` if it names a domain with tasks (on the host: its sizes are static); else a ConfigError."""
  check_choice("domain", domain, DOMAINS)
  if task.pairs(domain).shape[0] == 0:
    raise ConfigError(f"domain={domain!r} is not allowed: this task has no {domain} pairs "
                      f"(M1={task.M1}; unseen pairs need M1 >= 4)")
  return domain


def _uniform_index(u: jax.Array, n: int | jax.Array) -> jax.Array:
  """floor(u n), an index uniform on 0..n-1 for u ~ U[0, 1) (n a constant or a traced int32)."""
  return jnp.minimum((u * n).astype(jnp.int32), n - 1)


def _first_of_permutation(u_L: jax.Array, count: int | jax.Array) -> jax.Array:
  """`argsort(u_L) < count`, without a sort: position i holds an index below `count` iff i is the rank of one.

  The stable ranks (ties broken by index, as the stable argsort) by L x L comparisons,
  which XLA on CPU runs as one vectorised loop where a sort of each prompt's few
  uniforms was most of the sampler's time.
  """
  length = u_L.shape[0]
  index_L = jnp.arange(length)
  below_LxL = (u_L[None, :] < u_L[:, None]) | ((u_L[None, :] == u_L[:, None]) & (index_L[None, :] < index_L[:, None]))
  rank_L = below_LxL.sum(axis=1)  # rank_L[j]: where u_L[j] lands in the sorted order
  return jnp.any((rank_L[None, :] == index_L[:, None]) & (index_L[None, :] < count), axis=1)


def _sample_one(key: jax.Array, task: ClassificationTask, pairs_Px2: jax.Array, num_pairs: int | jax.Array,
                relevant_RxD: jax.Array, irrelevant_IxD: jax.Array, num_irrelevant: int | jax.Array, prompt_len: int,
                same: int | jax.Array) -> ClassificationPrompts:
  # Every random choice comes from one uniform draw: each jax.random call adds a threefry block
  # to the program, and a call per choice made the sampler several times slower to compile.
  # Rows 0..l-1: the contexts, row l: the query (columns: position, kappa, irrelevant pattern);
  # row l+1: the prompt's task and the query's side.
  u_Tx3 = jax.random.uniform(key, (prompt_len + 2, 3))
  u_pair, u_side, _ = u_Tx3[prompt_len + 1]
  u_Tx3 = u_Tx3[:prompt_len + 1]
  a, b = pairs_Px2[_uniform_index(u_pair, num_pairs)]
  query_is_a = u_side < 0.5
  y_query = jnp.where(query_is_a, 1.0, -1.0)
  own, other = jnp.where(query_is_a, a, b), jnp.where(query_is_a, b, a)
  # Exactly `same` contexts carry the query's pattern: the argsort of iid uniforms is a uniform
  # random permutation, and the positions it maps below `same` are a uniform random subset.
  same_pattern_L = _first_of_permutation(u_Tx3[:prompt_len, 0], same)
  kappa_T = (2.0 * u_Tx3[:, 1] - 1.0) * task.kappa_max
  nu_T = _uniform_index(u_Tx3[:, 2], num_irrelevant)
  # The contexts and the query are built apart: one (l + 1, D) array sliced into both made
  # XLA copy the batch's contexts out of it.
  x_LxD = (relevant_RxD[jnp.where(same_pattern_L, own, other)]
           + kappa_T[:prompt_len, None] * irrelevant_IxD[nu_T[:prompt_len]])
  x_query_D = relevant_RxD[own] + kappa_T[prompt_len] * irrelevant_IxD[nu_T[prompt_len]]
  y_L = jnp.where(same_pattern_L, y_query, -y_query)
  # Noise (static levels, so a noise-free task draws exactly what it drew before noise existed): its own key.
  if task.label_noise > 0:
    flip_L = jax.random.uniform(jax.random.fold_in(key, 1), (prompt_len,)) < task.label_noise
    y_L = jnp.where(flip_L, -y_L, y_L)
  if task.feature_noise > 0:  # one (l + 1, D) draw, row l the query's: the draws of a single array
    noise_TxD = task.feature_noise * jax.random.normal(jax.random.fold_in(key, 2), (prompt_len + 1, x_LxD.shape[1]),
                                                       x_LxD.dtype)
    x_LxD, x_query_D = x_LxD + noise_TxD[:prompt_len], x_query_D + noise_TxD[prompt_len]
  return ClassificationPrompts(x=x_LxD, y=y_L, x_query=x_query_D, y_query=y_query, same_pattern=same_pattern_L)


def sample_prompts(key: jax.Array, task: ClassificationTask, batch: int, prompt_len: int, alpha: float,
                   domain: str = "train") -> ClassificationPrompts:
  """`batch` independent prompts of `domain`'s tasks. Jit with `static_argnums=(2, 3, 4, 5)`.

  Each prompt draws its task uniformly from the domain's pairs, its query's side
  with probability 1/2, and holds exactly `num_same(prompt_len, alpha)` contexts
  with the query's pattern, at uniformly random positions; then the task's noise.
  """
  return sample_prompts_by_count(key, task, batch, prompt_len, num_same(prompt_len, alpha), domain)


def sample_prompts_by_count(key: jax.Array, task: ClassificationTask, batch: int, prompt_len: int,
                            same: int | jax.Array, domain: str | jax.Array = "train") -> ClassificationPrompts:
  """As `sample_prompts`, with the number of same-pattern contexts given (0..prompt_len); it may be traced.

  One compiled program then serves every alpha at a prompt length. `domain` may be
  its index in DOMAINS (an int32 array, traced too: one program for every domain,
  the same draws as its name gives; the caller checks it with `check_domain`).
  """
  batch = check_int("batch", batch, 1)
  prompt_len = check_int("prompt_len", prompt_len, 1)
  if isinstance(domain, str):
    check_domain(task, domain)
  if isinstance(same, (int, np.integer)) and not 0 <= same <= prompt_len:
    raise fail("same", same, f"an integer in [0, prompt_len={prompt_len}]")
  pairs_Px2, num_pairs, relevant_RxD, irrelevant_IxD, num_irrelevant = _patterns(task, domain)
  keys = jax.random.split(key, batch)
  sample = lambda k: _sample_one(k, task, pairs_Px2, num_pairs, relevant_RxD, irrelevant_IxD, num_irrelevant,
                                 prompt_len, same)
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


# The columns of `outcome_sums`, in order.
OUTCOMES = ("error", "error_sq", "majority_vote_error", "majority_vote_error_sq", "attention_same", "hinge",
            "hinge_sq", "margin", "margin_sq")


def hinge_losses(output_B: jax.Array, y_B: jax.Array) -> jax.Array:
  """Per prompt, max(0, 1 - y F(P)): what training minimises and the theorems bound."""
  return jax.nn.relu(1.0 - y_B * output_B)


def outcome_sums(output_B: jax.Array, attention_BxL: jax.Array, prompts: ClassificationPrompts) -> jax.Array:
  """(9,) sums over the batch, in the order of OUTCOMES: ICL error and its square, majority-vote error and its
  square, attention on same-pattern contexts, hinge loss max(0, 1 - y F) and its square, margin y F and its square.

  The error of sign F(P) and of the labels' majority (`prediction_errors`); float32
  sums of halves and ones are exact below 2^23 prompts. The hinge loss and the
  margin read F(P) itself: the error is 0 once every margin is positive, the hinge
  loss only once every margin is at least 1.
  """
  error_B = prediction_errors(jnp.sign(output_B), prompts.y_query)
  vote_B = prediction_errors(majority_vote(prompts), prompts.y_query)
  mass_B = jnp.sum(attention_BxL * prompts.same_pattern, axis=-1)
  hinge_B = hinge_losses(output_B, prompts.y_query)
  margin_B = prompts.y_query * output_B
  return jnp.stack([error_B, error_B**2, vote_B, vote_B**2, mass_B, hinge_B, hinge_B**2, margin_B, margin_B**2],
                   axis=-1).sum(0)
