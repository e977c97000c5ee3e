r"""Seed 001's claims on the one-layer classifier as tables and figures under results/classify/ (Li et al. 2024).

    python3 scripts/classify_paper.py [--claim=prompt_length,mechanism,pruning,classical] [--out=results/classify]
                                      [--workdir=DIR]

Every claim reads one model: the default classification config
(icl_theory/configs/classify.py: trained on 12 of the 30 ordered pattern pairs
at alpha = 1/2, l = 20, 1000 SGD steps), checkpointed every 25 steps. Errors are
on unseen tasks (pattern pairs never trained on) unless a file says otherwise.

prompt_length/  error against test prompt length l for alpha' in {0.4, 0.5, 0.6,
                0.8, 1.0}, with each context sharing the query's pattern with
                probability alpha' (a Binomial(l, alpha') count, so a short prompt
                may hold none); majority vote and an ideal reader, wrong only when
                no context shares the pattern, beside it; the l needed for a fixed
                error against 1/alpha' and its fitted log-log slope. Also the error
                with the sampler's exact count round(alpha' l) >= 1.
mechanism/      over training (the checkpoints): the attention on same-pattern
                contexts, |W_Q p_query| and |W_K p_i|, and the magnitude and angles
                (to the mean IDR pattern, to q) of the largest neurons of W_O W_V of
                each output sign.
pruning/        error and mean margin y F(P) against the rate R of rows of W_O
                zeroed, smallest first, random (5 draws) and largest first, at
                alpha' = 0.5, 0.3, 0.2; the histogram of row norms.
classical/      ICL against logistic regression, SVMs (RBF, linear kernels), 1-NN
                and 3-NN fit on each prompt's own contexts, at alpha' = 0.8 and 0.6
                across l, on the same prompts; with the exact and the binomial count.

With --workdir the trained model and each finished claim's table are kept there
and a rerun reuses them; without, a temporary folder is used. Each claim takes a
few minutes on 2 CPU cores.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from typing import Any, Callable

import jax
import numpy as np
from absl import flags, logging

import icl_theory
from icl_theory import cli
from icl_theory.engine import files, sharding
from icl_theory.classification import mechanism
from icl_theory.classification import plots
from icl_theory.configs import classify
from icl_theory.classification import experiment as classification
from icl_theory.classification.task import majority_vote, num_same, sample_prompts
from icl_theory.engine.validation import ConfigError

CLAIMS = ("prompt_length", "mechanism", "pruning", "classical")
_CLAIM = flags.DEFINE_list("claim", list(CLAIMS), f"Which claims: a subset of {','.join(CLAIMS)}.")
_OUT = flags.DEFINE_string("out", os.path.join("results", "classify"), "Folder for the claims' folders.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the trained model and tables here (resumable); default: a "
                                                "temporary folder.")

DOMAIN = "unseen"
TEST_LEN = 20                         # the headline prompt length (= training length)
SNAPSHOT_EVERY = 25                   # steps between the checkpoints the mechanism claim reads

# prompt_length
LENGTH_ALPHAS = (0.4, 0.5, 0.6, 0.8, 1.0)
LENGTHS = tuple(range(1, 17)) + (20, 24, 32, 40)
TARGET_ERRORS = (0.1, 0.02)           # the fixed errors whose needed length is fitted against 1/alpha'
COUNT_SAMPLES = 4096                  # prompts per (l, k)
# mechanism
MECHANISM_SAMPLES = 4096
LARGEST = 8                           # the largest neurons of each sign (a quarter of the m/2 = 32)
# pruning
RATES = tuple(round(0.1 * i, 1) for i in range(11))
RANDOM_DRAWS = 5
PRUNING_SAMPLES = 4096
PRUNING_ALPHAS = (0.5, 0.3, 0.2)     # 0.3: the majority is always wrong; 0.2: near where the unpruned model fails
# classical
CLASSICAL_ALPHAS = (0.8, 0.6)
CLASSICAL_LENGTHS = (2, 4, 6, 10, 20, 40)
CLASSICAL_SAMPLES = 1000
# exact: round(alpha' l) >= 1 contexts on the query's pattern (the sampler's); binomial: each w.p. alpha'.
CLASSICAL_SAMPLINGS = ("exact", "binomial")


def base_config():
  """The default classification run, with a checkpoint every SNAPSHOT_EVERY steps (all kept) and a light evaluation."""
  config = classify.get_config()
  config.update(checkpoint_every=SNAPSHOT_EVERY, keep_checkpoints=config.steps // SNAPSHOT_EVERY,
                eval_samples=4096, test_alphas=(0.3, 0.5), test_s1s=(1.0,))
  return config


class Model:
  """The trained base run, trained (or resumed) on first use."""

  def __init__(self, workdir: str):
    self.workdir = os.path.join(workdir, "base")
    self.config = base_config()
    self._result = None

  @property
  def result(self) -> icl_theory.RunResult:
    if self._result is None:
      self._result = icl_theory.train(self.config, self.workdir)
      logging.info("base model: unseen-task error %.4f, attention on the query's pattern %.3f",
                   self._result.summary["unseen_task_error"], self._result.summary["unseen_task_attention_same"])
    return self._result

  def snapshots(self) -> list[tuple[int, Any]]:
    """(step, params) at initialisation and at every checkpoint of the run."""
    self.result  # trained (or resumed) first
    return icl_theory.load_snapshots(self.workdir)


def _key(name: str) -> jax.Array:
  """A fixed evaluation key per claim, apart from the training's and the run's own evaluation."""
  return jax.random.fold_in(jax.random.PRNGKey(20_240_001), sum(map(ord, name)))


# --- prompt length ----------------------------------------------------------------------------------------------


def length_needed(lengths: np.ndarray, errors: np.ndarray, target: float) -> tuple[float, bool]:
  """The l at which the error first falls to `target`, linear between the two lengths around the crossing.

  Also whether it is censored: already at or below the target at the shortest
  length (then that length), or never reached (then nan).
  """
  below = np.flatnonzero(errors <= target)
  if below.size == 0:
    return math.nan, True
  j = below[0]
  if j == 0:
    return float(lengths[0]), True
  fraction = (errors[j - 1] - target) / (errors[j - 1] - errors[j])
  return float(lengths[j - 1] + fraction * (lengths[j] - lengths[j - 1])), False


def _slope(alphas: list[float], needed: list[float]) -> float | None:
  """The least-squares slope of log(needed) against log(1/alpha'); None for fewer than 2 points."""
  if len(alphas) < 2:
    return None
  return float(np.polyfit(np.log(1 / np.asarray(alphas)), np.log(np.asarray(needed)), 1)[0])


def prompt_length_claim(model: Model) -> dict[str, Any]:
  params, task = model.result.params, model.result.task
  counts, rows = [], []
  for l in LENGTHS:
    errors = mechanism.error_by_count(params, task, _key("prompt_length"), l, COUNT_SAMPLES, DOMAIN)
    for k in range(l + 1):
      counts.append({"test_prompt_len": l, "same_count": k, "icl_error": errors.icl_error[k],
                     "icl_error_stderr": errors.icl_error_stderr[k], "attention_same": errors.attention_same[k],
                     "majority_vote_error": errors.majority_vote_error[k]})
    for alpha in LENGTH_ALPHAS:
      k_exact = num_same(l, alpha, ("test_prompt_len", "alpha_test"))
      rows.append({"alpha_test": alpha, "test_prompt_len": l,
                   **mechanism.binomial_mixture(errors, alpha),
                   "exact_count": k_exact, "exact_count_icl_error": errors.icl_error[k_exact],
                   "exact_count_majority_vote_error": errors.majority_vote_error[k_exact]})
    logging.info("prompt_length: l = %d done", l)

  needed = []
  for target in TARGET_ERRORS:
    for alpha in LENGTH_ALPHAS:
      at = [r for r in rows if r["alpha_test"] == alpha]
      lengths = np.array([r["test_prompt_len"] for r in at], float)
      icl, censored = length_needed(lengths, np.array([r["icl_error"] for r in at]), target)
      ideal = math.log(target) / math.log(1 - alpha) if alpha < 1 else math.nan  # (1 - alpha')^l = target
      needed.append({"target_error": target, "alpha_test": alpha, "inverse_alpha": 1 / alpha,
                     "icl_length_needed": icl, "icl_censored": censored, "ideal_length_needed": ideal})
  fits = []
  for target in TARGET_ERRORS:
    at = [r for r in needed if r["target_error"] == target]
    used = [r for r in at if not r["icl_censored"]]
    ideal = [r for r in at if r["alpha_test"] < 1]
    fits.append({"target_error": target, "alphas_fitted": [r["alpha_test"] for r in used],
                 "icl_slope": _slope([r["alpha_test"] for r in used], [r["icl_length_needed"] for r in used]),
                 "ideal_slope_same_alphas": _slope([r["alpha_test"] for r in used if r["alpha_test"] < 1],
                                                   [r["ideal_length_needed"] for r in used if r["alpha_test"] < 1]),
                 "ideal_slope_alpha_below_1": _slope([r["alpha_test"] for r in ideal],
                                                     [r["ideal_length_needed"] for r in ideal])})
  return {"rows": rows, "counts": counts, "needed": needed, "fits": fits}


def write_prompt_length(table: dict[str, Any], target: str) -> None:
  files.write_csv(os.path.join(target, "prompt_length.csv"), table["rows"], significant=6)
  files.write_csv(os.path.join(target, "error_by_same_count.csv"), table["counts"], significant=6)
  files.write_json(os.path.join(target, "length_needed.json"),
                   {"domain": DOMAIN, "samples_per_count": COUNT_SAMPLES, "needed": table["needed"],
                    "fits": table["fits"]})
  plots.plot_prompt_length_claim(table["rows"], table["needed"], table["fits"], target)


# --- mechanism ----------------------------------------------------------------------------------------------------


def mechanism_claim(model: Model) -> dict[str, Any]:
  task, config = model.result.task, model.config
  evaluator = classification.Evaluator(classification.make_model(config), MECHANISM_SAMPLES)
  key = _key("mechanism")
  prompts = {domain: jax.tree.map(np.asarray, sample_prompts(jax.random.fold_in(key, i), task, 2048, TEST_LEN,
                                                             config.alpha, domain))
             for i, domain in enumerate(("train", "unseen"))}
  rows = []
  snapshots = model.snapshots()
  for step, params in snapshots:
    row: dict[str, Any] = {"step": step}
    for i, domain in enumerate(("train", "unseen")):
      figures = evaluator(params, task, jax.random.fold_in(key, 10 + i), TEST_LEN, config.alpha, domain, domain)
      row[f"{domain}_error"] = figures[f"{domain}_error"]
      stats = mechanism.attention_statistics(params, task, prompts[domain])
      row.update({f"{domain}_{name}": value for name, value in stats.items()})
    row.update(mechanism.neuron_summary(params, task, LARGEST))
    rows.append(row)
  final = snapshots[-1][1]
  stats = mechanism.neuron_statistics(final, task)
  largest = mechanism.largest_neurons(stats, LARGEST)
  w_o_norm = np.linalg.norm(np.asarray(final["W_O"], np.float64), axis=1)
  neurons = [{"neuron": i, "sign": int(stats.sign[i]), "magnitude": stats.magnitude[i], "w_o_norm": w_o_norm[i],
              "cos_mean_idr": stats.cos_idr[i], "cos_q": stats.cos_q[i],
              "largest_of_its_sign": bool(i in largest["positive"] or i in largest["negative"])}
             for i in range(stats.magnitude.size)]
  return {"rows": rows, "neurons": neurons, "alpha": config.alpha}


def write_mechanism(table: dict[str, Any], target: str) -> None:
  files.write_csv(os.path.join(target, "mechanism.csv"), table["rows"], significant=6)
  files.write_csv(os.path.join(target, "neurons_final.csv"), table["neurons"], significant=6)
  plots.plot_mechanism_claim(table["rows"], table["neurons"], table["alpha"], LARGEST, target)


# --- pruning ------------------------------------------------------------------------------------------------------


def pruning_claim(model: Model) -> dict[str, Any]:
  params, task, config = model.result.params, model.result.task, model.config
  evaluator = classification.Evaluator(classification.make_model(config), PRUNING_SAMPLES)
  key = _key("pruning")
  rows = []
  for alpha in PRUNING_ALPHAS:
    majority = evaluator(params, task, key, TEST_LEN, alpha, DOMAIN, "eval")["eval_majority_vote_error"]
    prompts = jax.tree.map(np.asarray, sample_prompts(jax.random.fold_in(key, 1), task, 2048, TEST_LEN, alpha,
                                                      DOMAIN))
    for rate in RATES:
      for strategy in mechanism.PRUNING_STRATEGIES:
        for draw in range(RANDOM_DRAWS) if strategy == "random" else (0,):
          pruned = mechanism.prune(params, rate, strategy, jax.random.fold_in(key, 100 + draw))
          figures = evaluator(pruned, task, key, TEST_LEN, alpha, DOMAIN, "eval")
          output_B, _ = mechanism.forward(pruned, task, prompts)
          rows.append({"alpha_test": alpha, "test_prompt_len": TEST_LEN, "rate": rate, "strategy": strategy,
                       "draw": draw,
                       "pruned_rows": mechanism.num_pruned(config.m, rate), "error": figures["eval_error"],
                       "error_stderr": figures["eval_error_stderr"],
                       "mean_margin": float(np.mean(prompts.y_query * np.asarray(output_B))),
                       "majority_vote_error": majority})
  w_o_norm = np.linalg.norm(np.asarray(params["W_O"], np.float64), axis=1)
  stats = mechanism.neuron_statistics(params, task)
  rank = lambda v: np.argsort(np.argsort(v))
  spearman = float(np.corrcoef(rank(w_o_norm), rank(stats.magnitude))[0, 1])
  return {"rows": rows, "w_o_row_norms": w_o_norm.tolist(), "neuron_magnitudes": stats.magnitude.tolist(),
          "signs": stats.sign.tolist(), "spearman_w_o_vs_w_o_w_v": spearman}


def write_pruning(table: dict[str, Any], target: str) -> None:
  files.write_csv(os.path.join(target, "pruning.csv"), table["rows"], significant=6)
  files.write_json(os.path.join(target, "row_magnitudes.json"),
                   {key: table[key] for key in ("w_o_row_norms", "neuron_magnitudes", "signs",
                                                "spearman_w_o_vs_w_o_w_v")})
  plots.plot_pruning_claim(table["rows"], table["w_o_row_norms"], table["signs"], target)


# --- classical classifiers ----------------------------------------------------------------------------------------


def classical_claim(model: Model) -> dict[str, Any]:
  params, task = model.result.params, model.result.task
  key = _key("classical")
  rows = []
  for sampling in CLASSICAL_SAMPLINGS:
    for alpha in CLASSICAL_ALPHAS:
      for l in CLASSICAL_LENGTHS:
        prompt_key = jax.random.fold_in(jax.random.fold_in(key, l), sampling == "binomial")
        if sampling == "exact":
          prompts = jax.tree.map(np.asarray, sample_prompts(prompt_key, task, CLASSICAL_SAMPLES, l, alpha, DOMAIN))
        else:
          prompts = mechanism.sample_binomial_prompts(prompt_key, task, CLASSICAL_SAMPLES, l, alpha, DOMAIN)
        errors = {"icl": np.asarray(mechanism.icl_errors(params, task, prompts)),
                  "majority_vote": np.asarray(mechanism.prediction_errors(majority_vote(prompts), prompts.y_query))}
        for name, prediction in mechanism.classical_predictions(prompts).items():
          errors[name] = np.asarray(mechanism.prediction_errors(prediction, prompts.y_query))
        for method, error_B in errors.items():
          rows.append({"sampling": sampling, "alpha_test": alpha, "test_prompt_len": l,
                       "same_count": num_same(l, alpha) if sampling == "exact" else None,
                       "method": method, "error": float(error_B.mean()),
                       "error_stderr": float(error_B.std(ddof=1) / math.sqrt(error_B.size))})
        logging.info("classical: %s count, alpha'=%g, l=%d done", sampling, alpha, l)
  return {"rows": rows}


def write_classical(table: dict[str, Any], target: str) -> None:
  files.write_csv(os.path.join(target, "classical.csv"), table["rows"], significant=6)
  plots.plot_classical_claim(table["rows"], target)


_CLAIM_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "prompt_length": (prompt_length_claim, write_prompt_length), "mechanism": (mechanism_claim, write_mechanism),
    "pruning": (pruning_claim, write_pruning), "classical": (classical_claim, write_classical)}


def run_claim(name: str, model: Model, workdir: str, out: str) -> None:
  """Computes a claim's table (or reuses it from workdir), then writes its files and figures under out/name."""
  compute, write = _CLAIM_FUNCTIONS[name]
  cached = os.path.join(workdir, name, "table.json")
  if os.path.exists(cached):
    table = files.read_json(cached)
    logging.info("%s: reusing %s", name, cached)
  else:
    table = files.to_builtin(compute(model))
    files.write_json(cached, table)
  target = os.path.join(out, name)
  os.makedirs(target, exist_ok=True)
  write(table, target)
  logging.info("%s: written to %s", name, target)


def main(argv) -> None:
  if len(argv) > 1:
    print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
    sys.exit(2)
  unknown = sorted(set(_CLAIM.value) - set(CLAIMS))
  if unknown or not _CLAIM.value:
    print(f"error: claim={','.join(_CLAIM.value)!r} is not allowed: a non-empty subset of {','.join(CLAIMS)}",
          file=sys.stderr)
    sys.exit(2)
  sharding.use_cpu_cores(divides=base_config().batch_size)  # one data-parallel CPU device per core for training
  try:
    with tempfile.TemporaryDirectory() as tmp:
      workdir = _WORKDIR.value or tmp
      model = Model(workdir)
      for name in _CLAIM.value:
        run_claim(name, model, workdir, _OUT.value)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli.run(main)
