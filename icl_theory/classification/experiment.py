"""In-context classification on the engine: config -> task -> model -> hinge loss -> errors.

The model is the theory's one-layer softmax attention + MLP (`model='softmax_mlp'`)
or the paper's deeper check, a GPT-2-style transformer (`model='gpt'`,
icl_theory.classification.transformer); both take the same tokens and return F(P) and
the query's attention over the contexts, so training and evaluation are shared.

`EXPERIMENT` (a `Classification`, the engine's `Experiment`) trains with the hinge
loss on prompts of the training tasks. `icl_theory.engine.run.train(EXPERIMENT,
config, workdir)` writes a single run (summary.json: the ICL error with its
standard error, the majority vote's error and the attention on same-pattern
contexts on training tasks, unseen tasks and out of domain; the same by test
prompt length, by alpha' and, out of domain, by s1; the large neurons' alignment
for softmax_mlp, None for gpt; classification.png), and
`icl_theory.engine.sweep.sweep(EXPERIMENT, config, workdir)` a grid over alpha,
model and prompt length, each trained run evaluated at every alpha', s1 and test
prompt length (icl_theory/configs/classify_sweep.py).

Errors are Monte Carlo over fresh prompts from a key derived from the seed
(`eval_key`). A prediction is sign F(P); F(P) = 0 (every neuron off), like a tied
majority vote, counts as half an error: a fair coin's expected error.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import threading
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from icl_theory.configs import classify as classify_config
from icl_theory.engine import compiling, precision, sharding, trainer
from icl_theory.engine.experiment import Experiment
from icl_theory.engine.group import eval_key as _engine_eval_key
from icl_theory.classification import transformer
from icl_theory.classification.softmax_mlp import SoftmaxMLP, hinge_loss, neuron_weights, output_signs
from icl_theory.classification.transformer import Transformer
from icl_theory.classification.task import (DOMAINS, OOD_CONSTRUCTIONS, ClassificationTask, check_alpha, check_domain,
                                             num_same, outcome_sums, prompt_tokens, sample_prompts,
                                             sample_prompts_by_count)
from icl_theory.engine.validation import check_choice, check_float, check_int, fail

# Fields that change only bookkeeping, not the numbers a run produces.
BOOKKEEPING_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints")
# Fields that change only the evaluation: a rerun with new values re-evaluates the trained model.
EVALUATION_FIELDS = ("alpha_test", "test_prompt_len", "test_prompt_lens", "test_alphas", "test_s1s", "test_ood_alphas",
                     "eval_samples",
                     "ood_construction", "ood_draws")
# The headline errors' summary.json prefixes, by domain.
PREFIXES = {"train": "train_task", "unseen": "unseen_task", "ood": "ood"}
# The figures the Evaluator reports per prefix (summary.json keys `{prefix}_{figure}`): each error has its hinge
# loss and mean margin beside it.
FIGURES = ("error", "error_stderr", "hinge", "hinge_stderr", "margin", "margin_stderr", "majority_vote_error",
           "majority_vote_error_stderr", "attention_same")
_EVAL_CHUNK = 4096  # prompts per evaluation step (bounds the evaluation's memory)
_RECENT_CALLS = 64  # figures an `Evaluator` keeps, by their inputs: a run asks for about 50
_LARGE_NEURON_FRACTION = 0.25  # the neurons with the largest |W_O W_V| rows, for the alignment figures
# config.model: the one-layer model of the theory, or the deeper GPT-2-style transformer of the paper's Fig. 3a.
MODELS = ("softmax_mlp", "gpt")
# The fields each model is built from (`make_model`): with eval_samples, they pick the cached `Evaluator`.
MODEL_FIELDS = {"softmax_mlp": ("m", "qk_init_scale", "qk_init_noise", "init_scale"),
                "gpt": ("num_layers", "num_heads", "width", "mlp_ratio")}
Model = SoftmaxMLP | Transformer


def build_task(config: ml_collections.ConfigDict) -> ClassificationTask:
  return ClassificationTask(M1=config.M1, M2=config.M2, d_x=config.d_x, d_y=config.d_y,
                            kappa_max=config.kappa_max, s1=config.s1, num_ood_patterns=config.num_ood_patterns,
                            seed=config.seed, ood_construction=config.ood_construction, ood_draws=config.ood_draws,
                            label_noise=config.label_noise, feature_noise=config.feature_noise)


def _check_list(field: str, value: Any, check: Callable[[str, Any], Any]) -> list:
  """A non-empty list or tuple whose every item passes `check` (which names the field)."""
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
    raise fail(field, value, "a non-empty list, e.g. (1, 2)")
  return [check(field, item) for item in value]


def validate_config(config: ml_collections.ConfigDict) -> ClassificationTask:
  """Checks every field (raising ConfigError naming it) and returns the task.

  The task's patterns are drawn last, so that a bad field fails before JAX starts.
  """
  if check_int("M1", config.M1, 2) < 4:
    raise fail("M1", config.M1, "an integer >= 4, so that some ordered pairs are left as unseen tasks")
  num_same(config.prompt_len, config.alpha)
  num_same(config.test_prompt_len, config.alpha_test, ("test_prompt_len", "alpha_test"))
  _check_list("test_prompt_lens", config.test_prompt_lens, lambda f, v: check_int(f, v, 1))
  _check_list("test_alphas", config.test_alphas, check_alpha)
  _check_list("test_s1s", config.test_s1s, lambda f, v: check_float(f, v, minimum=0.0, strict=True))
  _check_list("test_ood_alphas", config.test_ood_alphas, check_alpha)
  # Both models' fields are checked whichever is chosen: a config is valid or not as a whole.
  check_choice("model", config.model, MODELS)
  m = check_int("m", config.m, 2)
  if m % 2:
    raise fail("m", config.m, "an even integer >= 2 (a_i = +1/m for half the neurons, -1/m for the rest)")
  check_float("qk_init_scale", config.qk_init_scale)
  check_float("qk_init_noise", config.qk_init_noise, minimum=0.0)
  check_float("init_scale", config.init_scale, minimum=0.0, strict=True)
  transformer.check_fields(config.num_layers, config.num_heads, config.width, config.mlp_ratio)
  trainer.validate_training_fields(config)
  return build_task(config)


def make_model(config: ml_collections.ConfigDict) -> Model:
  """The config's model: SoftmaxMLP (`model='softmax_mlp'`) or the GPT-2-style Transformer (`'gpt'`)."""
  if config.model == "gpt":
    return Transformer(num_layers=config.num_layers, num_heads=config.num_heads, width=config.width,
                       mlp_ratio=config.mlp_ratio)
  return SoftmaxMLP(m=config.m, qk_init_scale=config.qk_init_scale, qk_init_noise=config.qk_init_noise,
                    init_scale=config.init_scale)


def describe_model(config: ml_collections.ConfigDict | dict[str, Any]) -> str:
  """The config's model and its size in words (a ConfigDict, or summary.json's config dict)."""
  if config.get("model", "softmax_mlp") == "gpt":
    return (f"GPT-2-style transformer ({config['num_layers']} layers, {config['num_heads']} heads, "
            f"width {config['width']}, MLP {config['mlp_ratio']}x)")
  return f"softmax attention + MLP (m={config['m']})"


def make_objective(task: ClassificationTask, config: ml_collections.ConfigDict) -> trainer.Objective:
  """Hinge loss of F(P) on a fresh batch of training-task prompts at the config's alpha and prompt length."""
  model = make_model(config)
  batch_size, prompt_len, alpha = config.batch_size, config.prompt_len, config.alpha
  shapes = jax.eval_shape(lambda key: prompt_tokens(sample_prompts(key, task, 1, prompt_len, alpha), task.q),
                          jax.random.PRNGKey(0))
  dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # shapes only: nothing to compile

  def init(key):
    return model.init(key, *dummy)["params"]

  def loss(params, key, task):
    prompts = sample_prompts(key, task, batch_size, prompt_len, alpha, "train")
    output, _ = model.apply({"params": params}, *prompt_tokens(prompts, task.q))
    return hinge_loss(output, prompts.y_query)

  return trainer.Objective(init=init, loss=loss, batch_size=batch_size)


def eval_key(seed: int) -> jax.Array:
  """The key of a run's evaluation: a function of its seed alone (`icl_theory.engine.group.eval_key`)."""
  return _engine_eval_key(seed)


class Evaluator:
  """Monte Carlo errors of one model; one compiled program per prompt length, reused across domains, alpha and s1.

  The domain and the count of same-pattern contexts are traced arguments
  (`sample_prompts_by_count`), so the 50 estimates of a default run take 5 programs,
  one per test prompt length: the same draws as one program per domain gave, for
  half the programs to compile (or, warm, to trace, lower and load: 11 of them took
  1.4 s of a default run's 2.9 s evaluation). The programs are compiled ahead of
  time (`program`; a sweep calls it through `Classification.compile_evaluation` on
  its compiling thread while another group trains), at the library's float32
  precision (`engine.precision`), and run from host copies of the parameters and the
  task, their chunks of prompts split over the process's devices
  (`sharding.summed_over_chunks`: every core of a CPU with a device per core).
  """

  def __init__(self, model: Model, num_samples: int):
    self.chunk = min(num_samples, _EVAL_CHUNK)
    self.num_chunks = -(-num_samples // self.chunk)
    self.num_samples = self.chunk * self.num_chunks  # rounded up to whole chunks
    self.devices = sharding.chunk_devices(self.num_chunks)  # the chunks are split over them
    self._sums = jax.jit(functools.partial(self._sums_impl, model), static_argnums=(5,))
    self._programs: dict[tuple, Any] = {}  # (prompt length, the inputs' shapes) -> jax.stages.Compiled
    # The figures of recent calls, by the digest of everything they depend on. A run's headline and its
    # tables ask for some of the same estimates on the same keys (the headline's setting is a row of
    # three tables): 5 of a default run's 50, each 0.1 s of a compute-bound program.
    self._recent: collections.OrderedDict[bytes, dict[str, float]] = collections.OrderedDict()
    self._recent_lock = threading.Lock()

  def _sums_impl(self, model: Model, params: Any, task: ClassificationTask, key: jax.Array, same: jax.Array,
                 domain: jax.Array, prompt_len: int) -> jax.Array:
    def chunk_sums(key, shared):
      params, task, same, domain = shared
      prompts = sample_prompts_by_count(key, task, self.chunk, prompt_len, same, domain)
      return outcome_sums(*model.apply({"params": params}, *prompt_tokens(prompts, task.q)), prompts)

    return sharding.summed_over_chunks(chunk_sums, jax.random.split(key, self.num_chunks),
                                       (params, task, same, domain), self.devices)

  def program(self, params: Any, task: ClassificationTask, key: Any, prompt_len: int) -> Any:
    """The compiled sums for inputs of these shapes (arrays or jax.ShapeDtypeStructs): (params, task, key, same,
    domain), `domain` the index in DOMAINS."""
    leaves, treedef = jax.tree.flatten((params, task, key))
    signature = (prompt_len, treedef, tuple((tuple(x.shape), str(x.dtype)) for x in map(_shaped, leaves)))
    program = self._programs.get(signature)
    if program is None:  # two threads may both compile it: the same program, the dict keeps one
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(_shaped(x).shape, _shaped(x).dtype), (params, task, key))
      scalar = jax.ShapeDtypeStruct((), jnp.int32)
      with precision.context():
        program = compiling.compile_lowered(self._sums.lower(*abstract, scalar, scalar, prompt_len), self.devices)
      self._programs[signature] = program
    return program

  def __call__(self, params: Any, task: ClassificationTask, key: jax.Array, prompt_len: int, alpha: float,
               domain: str, prefix: str) -> dict[str, float]:
    """`{prefix}_{figure}` for every figure of FIGURES at (prompt_len, alpha): the error, hinge loss and margin of
    F(P) with their standard errors, majority vote's error, the attention on the query's pattern."""
    same = num_same(prompt_len, alpha)
    check_domain(task, domain)
    params, task, key = jax.device_get((params, task, key))
    digest = self._digest(params, task, key, prompt_len, same, domain)
    with self._recent_lock:
      figures = self._recent.get(digest)
    if figures is None:
      program = self.program(params, task, key, prompt_len)
      sums = program(params, task, key, np.int32(same), np.int32(DOMAINS.index(domain)))
      figures = self._figures(np.asarray(sums, np.float64))
      with self._recent_lock:
        self._recent[digest] = figures
        while len(self._recent) > _RECENT_CALLS:
          self._recent.popitem(last=False)
    return {f"{prefix}_{name}": value for name, value in figures.items()}

  @staticmethod
  def _digest(params: Any, task: ClassificationTask, key: Any, prompt_len: int, same: int, domain: str) -> bytes:
    """A digest of a call's inputs: the arrays' bytes, shapes and dtypes, the pytrees' structures, the settings."""
    digest = hashlib.blake2b(repr((prompt_len, same, domain, jax.tree.structure((params, task, key)))).encode(),
                             digest_size=20)
    for leaf in map(np.asarray, jax.tree.leaves((params, task, key))):
      digest.update(repr((leaf.shape, leaf.dtype.str)).encode())
      digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.digest()

  def _figures(self, sums: np.ndarray) -> dict[str, float]:
    n = self.num_samples
    mean = lambda total: total / n
    stderr = lambda total, total_sq: math.sqrt(max(total_sq / n - (total / n) ** 2, 0.0) / (n - 1))
    return {"error": mean(sums[0]), "error_stderr": stderr(sums[0], sums[1]),
            "hinge": mean(sums[5]), "hinge_stderr": stderr(sums[5], sums[6]),
            "margin": mean(sums[7]), "margin_stderr": stderr(sums[7], sums[8]),
            "majority_vote_error": mean(sums[2]), "majority_vote_error_stderr": stderr(sums[2], sums[3]),
            "attention_same": mean(sums[4])}


def _shaped(x: Any) -> Any:
  """`x` itself if it has a shape and dtype (arrays, ShapeDtypeStructs), else as a numpy array."""
  return x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)


_EVALUATORS: dict[tuple, Evaluator] = {}
_EVALUATORS_LOCK = threading.Lock()


def evaluator_for(config: ml_collections.ConfigDict) -> Evaluator:
  """The shared `Evaluator` of the config's model and eval_samples: every run and evaluation point of a
  sweep (and a run's tables) reuses its compiled programs."""
  model = check_choice("model", config.model, MODELS)
  key = (model, *(config[field] for field in MODEL_FIELDS[model]), int(config.eval_samples))
  with _EVALUATORS_LOCK:
    if key not in _EVALUATORS:
      _EVALUATORS[key] = Evaluator(make_model(config), int(config.eval_samples))
    return _EVALUATORS[key]


def domain_keys(key: jax.Array) -> dict[str, jax.Array]:
  """One evaluation key per domain, `fold_in(key, i)`; every setting of a domain shares it (paired draws)."""
  return {domain: jax.random.fold_in(key, i) for i, domain in enumerate(PREFIXES)}


def ood_task(task: ClassificationTask, config: ml_collections.ConfigDict,
             construction: str | None = None) -> ClassificationTask:
  """The run's task with its out-of-domain patterns at config.s1, built by `construction` (default
  config.ood_construction): `task` itself when it has those, else the task a run with them draws (neither
  enters training), so a sweep's evaluation point gives a row equal to the summary of a single run with those
  values (`task.with_s1` rounds its patterns differently)."""
  construction = config.ood_construction if construction is None else construction
  if np.float32(config.s1) == np.float32(task.s1) and construction == task.ood_construction:
    return task
  at = ml_collections.ConfigDict(config.to_dict())
  at.ood_construction = construction
  return build_task(at)


def neuron_alignment(params: Any, task: ClassificationTask) -> dict[str, float]:
  """How the large neurons of W_O W_V read a token (docs/theory.md claim B4).

  Over the quarter of the rows with the largest norm: the mean cosine of their
  first d_x entries with the mean IDR pattern, and of their last d_y entries
  with sign(a_i) q.
  """
  rows_MxD = np.asarray(neuron_weights(params), np.float64)
  signs_M = np.sign(np.asarray(output_signs(rows_MxD.shape[0])))
  large = np.argsort(-np.linalg.norm(rows_MxD, axis=1))[:max(1, round(_LARGE_NEURON_FRACTION * rows_MxD.shape[0]))]
  cosine = lambda a_KxD, b_D: (a_KxD @ b_D) / np.maximum(np.linalg.norm(a_KxD, axis=1) * np.linalg.norm(b_D), 1e-30)
  mean_idr = np.asarray(task.idr, np.float64).mean(0)
  x_part, y_part = rows_MxD[large, :task.d_x], rows_MxD[large, task.d_x:]
  return {"large_neurons_cos_mean_idr": float(cosine(x_part, mean_idr).mean()),
          "large_neurons_cos_signed_q": float((signs_M[large] * cosine(y_part, np.asarray(task.q, np.float64))).mean())}


def large_neurons(params: Any, task: ClassificationTask, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`neuron_alignment` for softmax_mlp; for gpt, which has no W_O W_V rows, the same keys with None."""
  if config.model == "softmax_mlp":  # W_O W_V as JAX computes it, whether `params` are on the host or not
    return neuron_alignment(jax.tree.map(jnp.asarray, params), task)
  return {"large_neurons_cos_mean_idr": None, "large_neurons_cos_signed_q": None}


def headline(params: Any, task: ClassificationTask, config: ml_collections.ConfigDict,
             key: jax.Array, memo: dict | None = None) -> dict[str, Any]:
  """One run's headline figures (a sweep's row, the top of summary.json), from its evaluation key `key`.

  For each domain, the `Evaluator` outputs at (test_prompt_len, alpha_test), out of
  domain with the patterns at config.s1 (`ood_task`); the large neurons' alignment.
  `memo` (one dict per run) keeps each domain's figures across evaluation points:
  the training and unseen tasks do not depend on s1, so a sweep over s1 measures them once.
  """
  evaluator = evaluator_for(config)
  keys = domain_keys(key)
  l_test, alpha_test = int(config.test_prompt_len), float(config.alpha_test)
  same = num_same(l_test, alpha_test)
  memo = {} if memo is None else memo
  out: dict[str, Any] = {"eval_prompts": evaluator.num_samples, "alpha_test_effective": same / l_test}
  for domain, prefix in PREFIXES.items():
    at = (id(evaluator), domain, l_test, same,
          (float(np.float32(config.s1)), config.ood_construction) if domain == "ood" else None)
    if at not in memo:
      domain_task = ood_task(task, config) if domain == "ood" else task
      memo[at] = evaluator(params, domain_task, keys[domain], l_test, alpha_test, domain, prefix)
    out.update(memo[at])
  if "large_neurons" not in memo:
    memo["large_neurons"] = large_neurons(params, task, config)
  out.update(memo["large_neurons"])
  return out


def tables(params: Any, task: ClassificationTask, config: ml_collections.ConfigDict,
           key: jax.Array) -> dict[str, Any]:
  """summary.json's tables: error by test prompt length, by alpha' and (out of domain) by construction, s1 and
  alpha'; and the headline's out-of-domain figures per construction, `ood_{construction}_{figure}`.

  The keys are those of `headline` (folded with the domain only), so the rows are
  paired: they differ in prompt length, alpha', s1 or construction, not in the random draws.
  """
  evaluator = evaluator_for(config)
  keys = domain_keys(key)
  l_test, alpha_test = int(config.test_prompt_len), float(config.alpha_test)
  at_s1 = ood_task(task, config)

  def row(prompt_len: int, alpha: float, domains=("unseen", "ood"), ood=at_s1) -> dict[str, Any]:
    values = {"alpha_effective": num_same(prompt_len, alpha) / prompt_len}
    for domain in domains:
      values.update(evaluator(params, ood if domain == "ood" else task, keys[domain], prompt_len, alpha, domain,
                              PREFIXES[domain]))
    return values

  by_construction = {}
  for construction in OOD_CONSTRUCTIONS:
    figures = evaluator(params, ood_task(task, config, construction), keys["ood"], l_test, alpha_test, "ood", "ood")
    by_construction.update({f"ood_{construction}_{name[len('ood_'):]}": value for name, value in figures.items()})
  return {
      **by_construction,
      "error_by_test_prompt_len": [{"test_prompt_len": int(l), **row(int(l), alpha_test)}
                                   for l in config.test_prompt_lens],
      "error_by_alpha_test": [{"alpha_test": float(a), **row(l_test, float(a))} for a in config.test_alphas],
      "ood_error_by_s1": [{"ood_construction": construction, "s1": float(s1), "alpha_test": float(a),
                           **row(l_test, float(a), ("ood",), at_s1.with_ood(construction, float(s1)))}
                          for construction in OOD_CONSTRUCTIONS for s1 in config.test_s1s
                          for a in config.test_ood_alphas],
  }


def format_summary(summary: dict[str, Any]) -> str:
  """ICL against majority vote, in and out of domain, and the tables by l, alpha' and s1, for the console."""
  config = summary["config"]

  def num(v, fmt=".4f"):
    return "-" if v is None else format(v, fmt)

  names = {"train": f"training tasks ({summary['num_train_tasks']})",
           "unseen": f"unseen tasks ({summary['num_unseen_tasks']})",
           "ood": f"out of domain (s1={config['s1']:g})"}
  construction = config.get("ood_construction", "training_pairs")
  names["ood"] = f"out of domain (s1={config['s1']:g}, {construction})"
  lines = [f"alpha'={config['alpha_test']:g}, l={config['test_prompt_len']}: "
           f"{summary['alpha_test_effective']:.3g} of the contexts share the query's pattern; "
           f"{summary['eval_prompts']} prompts per estimate",
           f"{'':48s}{'ICL error':20s}{'hinge':9s}{'margin':9s}{'majority':10s}attention on the query's pattern"]
  rows = [(names[domain], prefix) for domain, prefix in PREFIXES.items()]
  rows += [(f"  out of domain, {c}", f"ood_{c}") for c in OOD_CONSTRUCTIONS if f"ood_{c}_error" in summary]
  for name, prefix in rows:
    error = f"{summary[f'{prefix}_error']:.4f} +- {summary[f'{prefix}_error_stderr']:.4f}"
    lines.append(f"{name:48s}{error:20s}{summary[f'{prefix}_hinge']:<9.4f}{summary[f'{prefix}_margin']:<9.3f}"
                 f"{summary[f'{prefix}_majority_vote_error']:<10.4f}{summary[f'{prefix}_attention_same']:.3f}")

  def table(title: str, column: str, rows: list[dict], key: str) -> list[str]:
    out = ["", title, f"  {column:10s}{'unseen':>10s}{'hinge':>8s}{'ood':>10s}{'hinge':>8s}{'majority':>10s}"]
    out += [f"  {row[key]:<10g}{row['unseen_task_error']:10.4f}{row['unseen_task_hinge']:8.3f}{row['ood_error']:10.4f}"
            f"{row['ood_hinge']:8.3f}{row['unseen_task_majority_vote_error']:10.4f}" for row in rows]
    return out

  lines += table(f"error by test prompt length (alpha'={config['alpha_test']:g})", "l",
                 summary["error_by_test_prompt_len"], "test_prompt_len")
  lines += table(f"error by alpha' (l={config['test_prompt_len']})", "alpha'", summary["error_by_alpha_test"],
                 "alpha_test")
  s1s = sorted({row["s1"] for row in summary["ood_error_by_s1"]})
  alphas = sorted({row["alpha_test"] for row in summary["ood_error_by_s1"]})
  ood = {(row.get("ood_construction", construction), row["s1"], row["alpha_test"]): row
         for row in summary["ood_error_by_s1"]}
  for c in dict.fromkeys(row.get("ood_construction", construction) for row in summary["ood_error_by_s1"]):
    lines += ["", f"ood error (hinge loss) by s1 (rows) and alpha' (columns), {c}, l={config['test_prompt_len']}",
              "  " + " " * 10 + "".join(f"{a:>16g}" for a in alphas)]
    cell = lambda row: f"{row['ood_error']:8.4f} ({row['ood_hinge']:5.2f})"
    lines += [f"  {f's1={s:g}':10s}" + "".join(cell(ood[(c, s, a)]) for a in alphas) for s in s1s]
  if summary["large_neurons_cos_mean_idr"] is not None:
    lines += ["", f"large neurons of W_O W_V: cosine with the mean IDR pattern "
                  f"{summary['large_neurons_cos_mean_idr']:.3f}, with sign(a_i) q "
                  f"{summary['large_neurons_cos_signed_q']:.3f}"]
  lines += ["",
            f"model: {describe_model(config)}",
            f"{summary['steps']} steps, final loss {num(summary['final_train_loss'])}, "
            f"{num(summary['prompts_per_second'], '.3g')} prompts/s, {summary['wall_seconds']:.1f} s wall "
            f"({summary['compile_seconds']:.1f} s compiling, {summary['eval_seconds']:.1f} s evaluating)"]
  return "\n".join(lines)


def format_sweep(rows: Sequence[dict[str, Any]]) -> str:
  """How many rows finished, and their mean errors (unseen tasks, out of domain, majority vote)."""
  finished = [r for r in rows if r.get("status") == "finished"]
  lines = [f"{len(finished)}/{len(rows)} rows finished (a row: one trained run at one evaluation point)"]
  mean = lambda key: np.mean([r[key] for r in finished if r.get(key) is not None])
  if any(r.get("unseen_task_error") is not None for r in finished):
    lines.append(f"mean error over them: unseen tasks {mean('unseen_task_error'):.4f}, out of domain "
                 f"{mean('ood_error'):.4f} (majority vote: {mean('unseen_task_majority_vote_error'):.4f}, "
                 f"{mean('ood_majority_vote_error'):.4f})")
  return "\n".join(lines)


class Classification(Experiment):
  """In-context classification (Li et al. 2024) for the engine: single runs, and sweeps over alpha, model and
  prompt length, each trained run evaluated at every alpha', s1 and test prompt length."""

  name = "classification"
  run_figure = "classification.png"
  # bookkeeping_fields: the engine's. s1 only moves the out-of-domain test patterns, never training.
  evaluation_fields = EVALUATION_FIELDS + ("s1",)
  training_axes = {"alpha_values": "alpha", "model_values": "model", "prompt_len_values": "prompt_len"}
  evaluation_axes = {"alpha_test_values": "alpha_test", "s1_values": "s1", "test_prompt_len_values": "test_prompt_len",
                     "ood_construction_values": "ood_construction"}
  array_fields = ()  # alpha and prompt_len are Python constants of the loss: only the seed changes arrays
  metrics = tuple(f"{prefix}_{figure}" for prefix in PREFIXES.values() for figure in FIGURES) + (
                      "alpha_test_effective", "final_train_loss", "steps", "status")
  cpu_data_parallel = True  # measured on 2 cores: a single run's steps gain ~18% from a CPU device per core

  def defaults(self) -> dict[str, Any]:
    return classify_config.get_config().to_dict()

  def validate(self, config: ml_collections.ConfigDict) -> ClassificationTask:
    return validate_config(config)

  def build_task(self, config: ml_collections.ConfigDict) -> ClassificationTask:
    return build_task(config)

  def describe(self, config: ml_collections.ConfigDict, task: ClassificationTask) -> str:
    return (f"a {describe_model(config)} on {len(task.train_pairs)} training tasks of M1={task.M1} patterns, "
            f"alpha={config.alpha:g}, l={config.prompt_len}")

  def objective(self, task: ClassificationTask, config: ml_collections.ConfigDict, num_runs: int) -> trainer.Objective:
    return make_objective(task, config)

  def cost(self, config: ml_collections.ConfigDict) -> float:
    return float(config.prompt_len)

  def compile_evaluation(self, param_shapes: Any, tasks: ClassificationTask,
                         configs: Sequence[ml_collections.ConfigDict], devices: Sequence[jax.Device]) -> None:
    """Compiles the headline's programs (one per test prompt length, for every domain) into the shared evaluators."""
    unstack = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
    params, task = unstack(param_shapes), unstack(tasks)
    key = jax.eval_shape(lambda: eval_key(0))
    for evaluator, prompt_len in {(evaluator_for(c), int(c.test_prompt_len)): None for c in configs}:
      evaluator.program(params, task, key, prompt_len)
    return None

  def evaluate(self, params: Any, tasks: ClassificationTask, configs: Sequence[ml_collections.ConfigDict],
               keys: jax.Array, compiled: Any = None) -> list[dict[str, Any]]:
    """`headline` of each run r: its slice of the stacked params and tasks, at configs[r], from keys[r]."""
    return self.evaluate_points(params, tasks, [configs], keys, compiled)[0]

  def evaluate_points(self, params: Any, tasks: ClassificationTask,
                      configs_by_point: Sequence[Sequence[ml_collections.ConfigDict]], keys: jax.Array,
                      compiled: Any = None) -> list[list[dict[str, Any]]]:
    """`headline` at every point, each run's figures shared across the points where they cannot differ."""
    params, tasks, keys = jax.device_get((params, tasks, keys))
    run = lambda tree, r: jax.tree.map(lambda x: x[r], tree)
    memos = [{} for _ in range(len(keys))]
    return [[headline(run(params, r), run(tasks, r), config, keys[r], memos[r]) for r, config in enumerate(configs)]
            for configs in configs_by_point]

  def details(self, params: Any, task: ClassificationTask, config: ml_collections.ConfigDict,
              key: jax.Array) -> dict[str, Any]:
    return tables(params, task, config, key)

  def summary_header(self, task: ClassificationTask, config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"num_train_tasks": len(task.train_pairs), "num_unseen_tasks": len(task.unseen_pairs),
            "num_ood_tasks": len(task.ood_pairs) // task.ood_draws}  # the pairs of one block

  def format_summary(self, summary: dict[str, Any]) -> str:
    return format_summary(summary)

  def format_sweep(self, rows: Sequence[dict[str, Any]]) -> str:
    return format_sweep(rows)

  def plot_run(self, summary: dict[str, Any], history: Sequence[dict], path: str) -> None:
    from icl_theory.classification import plots  # matplotlib: imported where a figure is drawn (engine.plotting)
    plots.plot_classification_run(summary, history, path)

  def plot_sweep(self, rows: Sequence[dict[str, Any]], directory: str) -> None:
    from icl_theory.classification import plots
    plots.plot_sweep(rows, directory)


EXPERIMENT = Classification()
