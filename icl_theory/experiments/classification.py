"""In-context classification: config -> task -> model -> trainer -> errors -> workdir.

The model is the theory's one-layer softmax attention + MLP (`model='softmax_mlp'`)
or the paper's deeper check, a GPT-2-style transformer (`model='gpt'`,
icl_theory.models.transformer); both take the same tokens and return F(P) and
the query's attention over the contexts, so training and evaluation are shared.

`run(config, workdir)` trains with the hinge loss on prompts of the training
tasks and writes, in `workdir`:
  summary.json        config; the ICL error (with standard error), the majority
                      vote's error and the attention on same-pattern contexts on
                      training tasks, unseen tasks and out of domain; the same by
                      test prompt length, by alpha' and (out of domain) by s1;
                      the large neurons' alignment (softmax_mlp; None for gpt); steps, timings
  metrics.jsonl       one row per logging point (step, loss, learning rate, speed)
  classification.png  the loss curve, and the error against test prompt length and alpha'
  checkpoints/        orbax checkpoints; rerunning with the same workdir resumes
  config.json         the config, to refuse a different one in the same workdir

Errors are Monte Carlo over fresh prompts from a key derived from the seed. A
prediction is sign F(P); F(P) = 0 (every neuron off), like a tied majority vote,
counts as half an error: a fair coin's expected error.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from icl_theory import files, plotting, trainer
from icl_theory.models import transformer
from icl_theory.models.softmax_mlp import SoftmaxMLP, hinge_loss, neuron_weights, output_signs
from icl_theory.models.transformer import Transformer
from icl_theory.tasks.classification import (ClassificationTask, check_alpha, num_same, outcome_sums,
                                             prompt_tokens, sample_prompts, sample_prompts_by_count)
from icl_theory.validation import check_choice, check_float, check_int, fail

# Fields that change only bookkeeping, not the numbers a run produces.
BOOKKEEPING_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints")
# Fields that change only the evaluation: a rerun with new values re-evaluates the trained model.
EVALUATION_FIELDS = ("alpha_test", "test_prompt_len", "test_prompt_lens", "test_alphas", "test_s1s", "eval_samples")
_OUTPUTS = ("summary.json", "metrics.jsonl", "classification.png", "config.json", "checkpoints")
# The headline errors' summary.json prefixes, by domain.
PREFIXES = {"train": "train_task", "unseen": "unseen_task", "ood": "ood"}
_EVAL_CHUNK = 4096  # prompts per evaluation step (bounds the evaluation's memory)
_LARGE_NEURON_FRACTION = 0.25  # the neurons with the largest |W_O W_V| rows, for the alignment figures
# config.model: the one-layer model of the theory, or the deeper GPT-2-style transformer of the paper's Fig. 3a.
MODELS = ("softmax_mlp", "gpt")
Model = SoftmaxMLP | Transformer


def build_task(config: ml_collections.ConfigDict) -> ClassificationTask:
  return ClassificationTask(M1=config.M1, M2=config.M2, d_x=config.d_x, d_y=config.d_y,
                            kappa_max=config.kappa_max, s1=config.s1, num_ood_patterns=config.num_ood_patterns,
                            seed=config.seed)


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


def make_optimizer(config: ml_collections.ConfigDict):
  """The config's optimizer and learning-rate schedule."""
  return trainer.optimizer_from_config(config)


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
  """The key of a run's evaluation: a function of its seed alone."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1_000_003)


class Evaluator:
  """Monte Carlo errors of one model; one compiled program per (prompt length, domain), reused across alpha and s1."""

  def __init__(self, model: Model, num_samples: int):
    self.chunk = min(num_samples, _EVAL_CHUNK)
    self.num_chunks = -(-num_samples // self.chunk)
    self.num_samples = self.chunk * self.num_chunks  # rounded up to whole chunks
    self._sums = jax.jit(functools.partial(self._sums_impl, model), static_argnums=(4, 5))

  def _sums_impl(self, model: Model, params: Any, task: ClassificationTask, key: jax.Array, same: jax.Array,
                 prompt_len: int, domain: str) -> jax.Array:
    def chunk_sums(key):
      prompts = sample_prompts_by_count(key, task, self.chunk, prompt_len, same, domain)
      return outcome_sums(*model.apply({"params": params}, *prompt_tokens(prompts, task.q)), prompts)

    return jax.lax.map(chunk_sums, jax.random.split(key, self.num_chunks)).sum(0)

  def __call__(self, params: Any, task: ClassificationTask, key: jax.Array, prompt_len: int, alpha: float,
               domain: str, prefix: str) -> dict[str, float]:
    """`{prefix}_error`, `_error_stderr`, `_majority_vote_error` and `_attention_same` at (prompt_len, alpha)."""
    same = num_same(prompt_len, alpha)
    sums = np.asarray(self._sums(params, task, key, jnp.int32(same), prompt_len, domain), np.float64)
    n = self.num_samples
    mean = lambda total: total / n
    stderr = lambda total, total_sq: math.sqrt(max(total_sq / n - (total / n) ** 2, 0.0) / (n - 1))
    return {f"{prefix}_error": mean(sums[0]), f"{prefix}_error_stderr": stderr(sums[0], sums[1]),
            f"{prefix}_majority_vote_error": mean(sums[2]),
            f"{prefix}_majority_vote_error_stderr": stderr(sums[2], sums[3]),
            f"{prefix}_attention_same": mean(sums[4])}


def neuron_alignment(params: Any, task: ClassificationTask) -> dict[str, float]:
  """How the large neurons of W_O W_V read a token (THEORY claim 4).

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


def evaluate(params: Any, task: ClassificationTask, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every error and attention figure of summary.json (ICL, majority vote), from `eval_key(config.seed)`.

  The key is folded with the domain only, so the tables' rows are paired: they
  differ in prompt length, alpha' or s1, not in the random draws.
  """
  evaluator = Evaluator(make_model(config), config.eval_samples)
  root = eval_key(config.seed)
  key = {domain: jax.random.fold_in(root, i) for i, domain in enumerate(PREFIXES)}
  l_test, alpha_test = config.test_prompt_len, config.alpha_test
  out: dict[str, Any] = {"eval_prompts": evaluator.num_samples,
                         "alpha_test_effective": num_same(l_test, alpha_test) / l_test}
  for domain, prefix in PREFIXES.items():
    out.update(evaluator(params, task, key[domain], l_test, alpha_test, domain, prefix))

  def row(prompt_len: int, alpha: float, domains=("unseen", "ood"), row_task=task) -> dict[str, Any]:
    values = {"alpha_effective": num_same(prompt_len, alpha) / prompt_len}
    for domain in domains:
      values.update(evaluator(params, row_task, key[domain], prompt_len, alpha, domain, PREFIXES[domain]))
    return values

  out["error_by_test_prompt_len"] = [{"test_prompt_len": int(l), **row(int(l), alpha_test)}
                                     for l in config.test_prompt_lens]
  out["error_by_alpha_test"] = [{"alpha_test": float(a), **row(l_test, float(a))} for a in config.test_alphas]
  out["ood_error_by_s1"] = [{"s1": float(s1), "alpha_test": float(a),
                             **row(l_test, float(a), ("ood",), task.with_s1(float(s1)))}
                            for s1 in config.test_s1s for a in config.test_alphas]
  if config.model == "softmax_mlp":
    out.update(neuron_alignment(params, task))
  else:  # the transformer has no W_O W_V rows: the keys stay, empty
    out.update(large_neurons_cos_mean_idr=None, large_neurons_cos_signed_q=None)
  return out


class RunResult(NamedTuple):
  """What `icl_theory.train` returns for 'classification'."""
  summary: dict[str, Any]
  params: Any               # the trained model's parameters (SoftmaxMLP or Transformer, per config.model)
  task: ClassificationTask  # the patterns and task split
  history: list[dict]       # the metrics.jsonl rows
  workdir: str


def run(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False) -> RunResult:
  """Trains, evaluates in and out of domain, writes the workdir."""
  t_start = time.perf_counter()
  task = validate_config(config)
  files.claim_workdir(workdir, config.to_dict(), _OUTPUTS, BOOKKEEPING_FIELDS + EVALUATION_FIELDS, overwrite)
  optimizer, lr_schedule = make_optimizer(config)
  settings = trainer.LoopSettings.from_config(config)
  logging.info("Training a %s on %d training tasks of M1=%d patterns, alpha=%g, l=%d, into %s",
               describe_model(config), len(task.train_pairs), task.M1, config.alpha, config.prompt_len, workdir)
  result = trainer.fit(make_objective(task, config), optimizer, lr_schedule, settings, config.seed, task, workdir,
                       data_parallel=config.get("data_parallel", True))
  params = result.state.params
  t_eval = time.perf_counter()
  evaluation = evaluate(params, task, config)
  eval_seconds = time.perf_counter() - t_eval
  summary: dict[str, Any] = {
      "config": config.to_dict(),
      **evaluation,
      "num_train_tasks": len(task.train_pairs),
      "num_unseen_tasks": len(task.unseen_pairs),
      "num_ood_tasks": len(task.ood_pairs),
      **result.run_figures(config.batch_size),
      "eval_seconds": eval_seconds,
      "status": "finished",
  }
  summary["wall_seconds"] = time.perf_counter() - t_start
  files.write_json(os.path.join(workdir, "summary.json"), summary)
  plotting.plot_classification_run(summary, result.history, os.path.join(workdir, "classification.png"))
  return RunResult(files.to_builtin(summary), params, task, result.history, workdir)


def format_summary(summary: dict[str, Any]) -> str:
  """ICL against majority vote, in and out of domain, and the tables by l, alpha' and s1, for the console."""
  config = summary["config"]

  def num(v, fmt=".4f"):
    return "-" if v is None else format(v, fmt)

  names = {"train": f"training tasks ({summary['num_train_tasks']})",
           "unseen": f"unseen tasks ({summary['num_unseen_tasks']})",
           "ood": f"out of domain (s1={config['s1']:g})"}
  lines = [f"alpha'={config['alpha_test']:g}, l={config['test_prompt_len']}: "
           f"{summary['alpha_test_effective']:.3g} of the contexts share the query's pattern; "
           f"{summary['eval_prompts']} prompts per estimate",
           f"{'':24s}{'ICL error':20s}{'majority vote':16s}attention on the query's pattern"]
  for domain, prefix in PREFIXES.items():
    error = f"{summary[f'{prefix}_error']:.4f} +- {summary[f'{prefix}_error_stderr']:.4f}"
    lines.append(f"{names[domain]:24s}{error:20s}{summary[f'{prefix}_majority_vote_error']:<16.4f}"
                 f"{summary[f'{prefix}_attention_same']:.3f}")

  def table(title: str, column: str, rows: list[dict], key: str) -> list[str]:
    out = ["", title, f"  {column:10s}{'unseen':>10s}{'ood':>10s}{'majority':>10s}"]
    out += [f"  {row[key]:<10g}{row['unseen_task_error']:10.4f}{row['ood_error']:10.4f}"
            f"{row['unseen_task_majority_vote_error']:10.4f}" for row in rows]
    return out

  lines += table(f"error by test prompt length (alpha'={config['alpha_test']:g})", "l",
                 summary["error_by_test_prompt_len"], "test_prompt_len")
  lines += table(f"error by alpha' (l={config['test_prompt_len']})", "alpha'", summary["error_by_alpha_test"],
                 "alpha_test")
  s1s = sorted({row["s1"] for row in summary["ood_error_by_s1"]})
  alphas = sorted({row["alpha_test"] for row in summary["ood_error_by_s1"]})
  ood = {(row["s1"], row["alpha_test"]): row["ood_error"] for row in summary["ood_error_by_s1"]}
  lines += ["", f"ood error by s1 (rows) and alpha' (columns), l={config['test_prompt_len']}",
            "  " + " " * 10 + "".join(f"{a:>10g}" for a in alphas)]
  lines += [f"  {f's1={s:g}':10s}" + "".join(f"{ood[(s, a)]:10.4f}" for a in alphas) for s in s1s]
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
