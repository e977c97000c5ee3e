r"""Seed 001's claims on the one-layer classifier as tables and figures under results/classify/ (Li et al. 2024).

    python3 scripts/classify_paper.py [--claim=prompt_length,mechanism,pruning,classical] [--out=results/classify]
                                      [--workdir=DIR]

Every claim reads the runs of one classification sweep (icl_theory.run_sweep, into
WORKDIR/sweep/): the default classification config (icl_theory/configs/classify.py:
12 of the 30 ordered pattern pairs, l = 20, 1000 SGD steps, seed 0) trained at
alpha = 0.5 (ours: the labels' majority ties) and at alpha = 0.8 (the paper's: the
majority is right), checkpointed every 25 steps. The sweep's evaluation axes are
the prompt-length claim's grid (alpha' x test prompt length); the other claims load
the trained runs (icl_theory.load_run, load_snapshots). Errors are on unseen tasks
(pattern pairs never trained on) unless a file says otherwise; every error has its
hinge loss max(0, 1 - y F(P)) beside it.

prompt_length/  unseen-task error and hinge loss against l for each alpha', with
                floor(alpha' l) contexts on the query's pattern (none when
                l < 1/alpha'); the smallest l from which on the error is at most
                TARGET_ERROR and the hinge loss at most TARGET_HINGE, against
                1/alpha', with the fitted log-log slope (the claim: ~1).
mechanism/      over training (the checkpoints), per training alpha: the attention on
                same-pattern contexts, |W_Q p_query| and |W_K p_i|, and the magnitude
                and angles (to the mean IDR pattern, to q) of the largest neurons of
                W_O W_V of each output sign.
pruning/        error and hinge loss against the rate R of rows of W_O zeroed,
                smallest first, random (RANDOM_DRAWS draws) and largest first, the
                neurons ranked by the rows of W_O and by those of W_O W_V; on unseen
                tasks and out of domain (the config's ODR construction, S1 = 1).
classical/      ICL against logistic regression, SVMs (RBF, linear kernels), 1-NN
                and 3-NN fit on each prompt's own contexts, at alpha' in {0.6, 0.8}
                across l, on the same prompts, without noise and with each noise
                option (NOISES: our choice, the paper's noise is unknown).

With --workdir the sweep and each finished claim's table are kept there and a
rerun reuses them; without, a temporary folder is used.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import flags, logging

import icl_theory
from icl_theory import cli
from icl_theory.engine import files, sharding
from icl_theory.classification import claim_plots, mechanism
from icl_theory.classification import plots
from icl_theory.configs import classify
from icl_theory.classification import experiment as classification
from icl_theory.classification.task import hinge_losses, majority_vote, num_same, sample_prompts
from icl_theory.engine.validation import ConfigError

CLAIMS = ("prompt_length", "mechanism", "pruning", "classical")
_CLAIM = flags.DEFINE_list("claim", list(CLAIMS), f"Which claims: a subset of {','.join(CLAIMS)}.")
_OUT = flags.DEFINE_string("out", os.path.join("results", "classify"), "Folder for the claims' folders.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the trained models and tables here (resumable); default: a "
                                                "temporary folder.")

DOMAIN = "unseen"
TRAIN_ALPHAS = (0.5, 0.8)             # ours and the paper's training alpha
TEST_LEN = 20                         # the headline prompt length (= training length)
SNAPSHOT_EVERY = 25                   # steps between the checkpoints the mechanism claim reads

# prompt_length: the sweep's evaluation grid
LENGTH_ALPHAS = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
LENGTHS = tuple(range(1, 13)) + (14, 16, 20, 25, 30, 40)
TARGET_ERROR = 0.05                   # the fixed error ... (our choice)
TARGET_HINGE = 0.1                    # ... and hinge loss whose smallest l is fitted against 1/alpha' (our choice)
LENGTH_SAMPLES = 2048                 # prompts per (alpha', l) and domain
# mechanism
MECHANISM_SAMPLES = 4096
LARGEST = 8                           # the largest neurons of each sign (a quarter of the m/2 = 32)
# pruning
RATES = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
RANDOM_DRAWS = 5
PRUNING_SAMPLES = 2048
PRUNING_ALPHAS = (0.5, 0.8)
PRUNING_DOMAINS = ("unseen", "ood")
# classical
CLASSICAL_ALPHAS = (0.8, 0.6)
CLASSICAL_LENGTHS = (2, 4, 8, 20)
CLASSICAL_SAMPLES = 400
# (name, label_noise, feature_noise) at test: our choices, the paper's noise is unknown.
NOISES = (("none", 0.0, 0.0), ("labels 0.2", 0.2, 0.0), ("features 0.1", 0.0, 0.1))


def sweep_config() -> ml_collections.ConfigDict:
  """The sweep every claim reads: TRAIN_ALPHAS x seed 0, evaluated at LENGTH_ALPHAS x LENGTHS."""
  base = classify.get_config()
  base.update(checkpoint_every=SNAPSHOT_EVERY, keep_checkpoints=base.steps // SNAPSHOT_EVERY,
              eval_samples=LENGTH_SAMPLES, test_prompt_lens=(TEST_LEN,), test_alphas=(0.5,), test_s1s=(1.0,),
              test_ood_alphas=(0.5,))
  config = ml_collections.ConfigDict()
  config.experiment = "classification_sweep"  # a label: the experiment trained is base.experiment
  config.base = base
  config.alpha_values = TRAIN_ALPHAS
  config.num_seeds = 1
  config.alpha_test_values = LENGTH_ALPHAS
  config.test_prompt_len_values = LENGTHS
  return config


class Models:
  """The sweep's trained runs, trained (or resumed) on first use."""

  def __init__(self, workdir: str):
    self.workdir = os.path.join(workdir, "sweep")
    self.config = sweep_config()
    self._rows = None

  @property
  def rows(self) -> list[dict]:
    if self._rows is None:
      self._rows = icl_theory.run_sweep(self.config, self.workdir)
    return self._rows

  def run(self, alpha: float) -> icl_theory.LoadedRun:
    self.rows  # trained (or resumed) first
    return icl_theory.load_run(self.workdir, {"alpha": alpha, "seed": 0})

  def snapshots(self, alpha: float) -> list[tuple[int, Any]]:
    """(step, params) at initialisation and at every checkpoint of the run."""
    self.rows
    return icl_theory.load_snapshots(self.workdir, {"alpha": alpha, "seed": 0})


def _key(name: str) -> jax.Array:
  """A fixed evaluation key per claim, apart from the training's and the runs' own evaluation."""
  return jax.random.fold_in(jax.random.PRNGKey(20_240_001), sum(map(ord, name)))


# --- prompt length ----------------------------------------------------------------------------------------------


def length_needed(lengths: np.ndarray, values: np.ndarray, target: float) -> int | None:
  """The smallest l of the grid from which on every value is at most `target`; None if the longest is above it."""
  above = np.flatnonzero(values > target)
  if above.size == 0:
    return int(lengths[0])
  return None if above[-1] == len(lengths) - 1 else int(lengths[above[-1] + 1])


def fitted_slope(inverse_alphas: list[float], needed: list[float]) -> float | None:
  """The least-squares slope of log(needed) against log(1/alpha'); None for fewer than 2 distinct points."""
  if len(set(inverse_alphas)) < 2:
    return None
  return float(np.polyfit(np.log(np.asarray(inverse_alphas)), np.log(np.asarray(needed, float)), 1)[0])


def prompt_length_claim(models: Models) -> dict[str, Any]:
  keep = ("alpha", "alpha_test", "test_prompt_len", "alpha_test_effective") + tuple(
      f"{prefix}_{figure}" for prefix in ("unseen_task", "ood", "train_task") for figure in
      ("error", "error_stderr", "hinge", "margin", "majority_vote_error", "attention_same"))
  rows = [{"train_alpha": r["alpha"], "same_count": num_same(r["test_prompt_len"], r["alpha_test"]),
           **{k: r[k] for k in keep if k != "alpha"}} for r in models.rows if r["status"] == "finished"]
  needed, fits = [], []
  for train_alpha in TRAIN_ALPHAS:
    for figure, target in (("error", TARGET_ERROR), ("hinge", TARGET_HINGE)):
      points = []
      for alpha in LENGTH_ALPHAS:
        curve = sorted((r for r in rows if r["train_alpha"] == train_alpha and r["alpha_test"] == alpha),
                       key=lambda r: r["test_prompt_len"])
        lengths = np.array([r["test_prompt_len"] for r in curve])
        l_needed = length_needed(lengths, np.array([r[f"unseen_task_{figure}"] for r in curve]), target)
        needed.append({"train_alpha": train_alpha, "figure": figure, "target": target, "alpha_test": alpha,
                       "inverse_alpha": 1 / alpha, "length_needed": l_needed,
                       # l >= 1/alpha' is what floor(alpha' l) >= 1 needs: the first same-pattern context.
                       "first_same_context_length": math.ceil(1 / alpha - 1e-9)})
        if l_needed is not None:
          points.append((1 / alpha, l_needed))
      fits.append({"train_alpha": train_alpha, "figure": figure, "target": target,
                   "alphas_fitted": [round(1 / x, 6) for x, _ in points],
                   "slope": fitted_slope([x for x, _ in points], [n for _, n in points])})
  return {"rows": rows, "needed": needed, "fits": fits}


def write_prompt_length(table: dict[str, Any], target: str) -> None:
  files.write_csv(os.path.join(target, "prompt_length.csv"), table["rows"], significant=6)
  files.write_csv(os.path.join(target, "length_needed.csv"), table["needed"], significant=6)
  files.write_json(os.path.join(target, "length_needed.json"),
                   {"domain": DOMAIN, "samples_per_estimate": LENGTH_SAMPLES, "target_error": TARGET_ERROR,
                    "target_hinge": TARGET_HINGE, "needed": table["needed"], "fits": table["fits"]})
  claim_plots.plot_prompt_length(table["rows"], table["needed"], table["fits"],
                                 os.path.join(target, "prompt_length.png"))


# --- mechanism ----------------------------------------------------------------------------------------------------


def mechanism_claim(models: Models) -> dict[str, Any]:
  out = {"alphas": list(TRAIN_ALPHAS)}
  key = _key("mechanism")
  for train_alpha in TRAIN_ALPHAS:
    run = models.run(train_alpha)
    task, config = run.task, run.config
    evaluator = classification.Evaluator(classification.make_model(config), MECHANISM_SAMPLES)
    prompts = {domain: jax.tree.map(np.asarray, sample_prompts(jax.random.fold_in(key, i), task, 2048, TEST_LEN,
                                                               config.alpha, domain))
               for i, domain in enumerate(("train", "unseen"))}
    rows = []
    snapshots = models.snapshots(train_alpha)
    for step, params in snapshots:
      row: dict[str, Any] = {"train_alpha": train_alpha, "step": step}
      for i, domain in enumerate(("train", "unseen")):
        figures = evaluator(params, task, jax.random.fold_in(key, 10 + i), TEST_LEN, config.alpha, domain, domain)
        row[f"{domain}_error"] = figures[f"{domain}_error"]
        row[f"{domain}_hinge"] = figures[f"{domain}_hinge"]
        stats = mechanism.attention_statistics(params, task, prompts[domain])
        row.update({f"{domain}_{name}": value for name, value in stats.items()})
      row.update(mechanism.neuron_summary(params, task, LARGEST))
      rows.append(row)
    final = snapshots[-1][1]
    stats = mechanism.neuron_statistics(final, task)
    largest = mechanism.largest_neurons(stats, LARGEST)
    w_o_norm = mechanism.neuron_norms(final, "w_o")
    neurons = [{"train_alpha": train_alpha, "neuron": i, "sign": int(stats.sign[i]), "magnitude": stats.magnitude[i],
                "w_o_norm": w_o_norm[i], "cos_mean_idr": stats.cos_idr[i], "cos_q": stats.cos_q[i],
                "largest_of_its_sign": bool(i in largest["positive"] or i in largest["negative"])}
               for i in range(stats.magnitude.size)]
    out[str(train_alpha)] = {"rows": rows, "neurons": neurons}
  return out


def write_mechanism(table: dict[str, Any], target: str) -> None:
  alphas = table["alphas"]
  files.write_csv(os.path.join(target, "mechanism.csv"), [r for a in alphas for r in table[str(a)]["rows"]],
                  significant=6)
  files.write_csv(os.path.join(target, "neurons_final.csv"), [r for a in alphas for r in table[str(a)]["neurons"]],
                  significant=6)
  for alpha in alphas:  # one folder of figures per training alpha
    folder = os.path.join(target, f"alpha_{alpha:g}")
    os.makedirs(folder, exist_ok=True)
    plots.plot_mechanism_claim(table[str(alpha)]["rows"], table[str(alpha)]["neurons"], alpha, LARGEST, folder)


# --- pruning ------------------------------------------------------------------------------------------------------


def pruning_claim(models: Models) -> dict[str, Any]:
  key = _key("pruning")
  rows, magnitudes = [], []
  for train_alpha in TRAIN_ALPHAS:
    run = models.run(train_alpha)
    params, config = run.params, run.config
    evaluator = classification.Evaluator(classification.make_model(config), PRUNING_SAMPLES)
    tasks = {"unseen": run.task, "ood": classification.ood_task(run.task, config)}
    for domain in PRUNING_DOMAINS:
      for alpha in PRUNING_ALPHAS:
        for ranking in mechanism.PRUNING_RANKINGS:
          for rate in RATES:
            for strategy in mechanism.PRUNING_STRATEGIES:
              for draw in range(RANDOM_DRAWS) if strategy == "random" else (0,):
                pruned = mechanism.prune(params, rate, strategy, jax.random.fold_in(key, 100 + draw), ranking)
                figures = evaluator(pruned, tasks[domain], key, TEST_LEN, alpha, domain, "eval")
                rows.append({"train_alpha": train_alpha, "domain": domain, "alpha_test": alpha, "ranking": ranking,
                             "rate": rate, "strategy": strategy, "draw": draw,
                             "pruned_rows": mechanism.num_pruned(config.m, rate),
                             **{f: figures[f"eval_{f}"] for f in ("error", "error_stderr", "hinge", "hinge_stderr",
                                                                  "margin", "majority_vote_error")}})
        logging.info("pruning: alpha=%g, %s, alpha'=%g done", train_alpha, domain, alpha)
    w_o, w_o_w_v = (mechanism.neuron_norms(params, r) for r in mechanism.PRUNING_RANKINGS)
    rank = lambda v: np.argsort(np.argsort(v))
    magnitudes.append({"train_alpha": train_alpha, "w_o_row_norms": w_o.tolist(), "w_o_w_v_row_norms": w_o_w_v.tolist(),
                       "spearman_w_o_vs_w_o_w_v": float(np.corrcoef(rank(w_o), rank(w_o_w_v))[0, 1])})
  return {"rows": rows, "magnitudes": magnitudes}


def write_pruning(table: dict[str, Any], target: str) -> None:
  files.write_csv(os.path.join(target, "pruning.csv"), table["rows"], significant=6)
  files.write_json(os.path.join(target, "row_magnitudes.json"), table["magnitudes"])
  claim_plots.plot_pruning(table["rows"], os.path.join(target, "pruning.png"))


# --- classical classifiers ----------------------------------------------------------------------------------------


def classical_claim(models: Models) -> dict[str, Any]:
  runs = {alpha: models.run(alpha) for alpha in TRAIN_ALPHAS}
  task = runs[TRAIN_ALPHAS[0]].task  # every run of the sweep has seed 0: the same patterns
  key = _key("classical")
  rows = []
  for n, (noise, label_noise, feature_noise) in enumerate(NOISES):
    noisy = task.with_noise(label_noise, feature_noise)
    for alpha in CLASSICAL_ALPHAS:
      for l in CLASSICAL_LENGTHS:
        prompts = jax.tree.map(np.asarray, sample_prompts(jax.random.fold_in(jax.random.fold_in(key, l), n), noisy,
                                                          CLASSICAL_SAMPLES, l, alpha, DOMAIN))
        errors, hinges = {}, {}
        for train_alpha, run in runs.items():
          output_B, _ = mechanism.forward(run.params, task, prompts)
          errors[f"icl (alpha={train_alpha:g})"] = np.asarray(mechanism.prediction_errors(np.sign(output_B),
                                                                                            prompts.y_query))
          hinges[f"icl (alpha={train_alpha:g})"] = float(np.mean(hinge_losses(output_B, prompts.y_query)))
        errors["majority_vote"] = np.asarray(mechanism.prediction_errors(majority_vote(prompts), prompts.y_query))
        for name, prediction in mechanism.classical_predictions(prompts).items():
          errors[name] = np.asarray(mechanism.prediction_errors(prediction, prompts.y_query))
        for method, error_B in errors.items():
          rows.append({"noise": noise, "label_noise": label_noise, "feature_noise": feature_noise,
                       "alpha_test": alpha, "test_prompt_len": l, "same_count": num_same(l, alpha), "method": method,
                       "error": float(error_B.mean()),
                       "error_stderr": float(error_B.std(ddof=1) / math.sqrt(error_B.size)),
                       "hinge": hinges.get(method)})
        logging.info("classical: noise %s, alpha'=%g, l=%d done", noise, alpha, l)
  return {"rows": rows}


def write_classical(table: dict[str, Any], target: str) -> None:
  files.write_csv(os.path.join(target, "classical.csv"), table["rows"], significant=6)
  claim_plots.plot_classical(table["rows"], os.path.join(target, "classical.png"))


_CLAIM_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "prompt_length": (prompt_length_claim, write_prompt_length), "mechanism": (mechanism_claim, write_mechanism),
    "pruning": (pruning_claim, write_pruning), "classical": (classical_claim, write_classical)}


def run_claim(name: str, model: Models, workdir: str, out: str) -> None:
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
  cli.only_flags(argv)
  if not _CLAIM.value:
    cli.fail(f"claim='' is not allowed: a non-empty subset of {','.join(CLAIMS)}")
  cli.check_subset("claim", _CLAIM.value, CLAIMS)
  sharding.use_cpu_cores()  # one CPU device per core: the sweep splits its runs over them
  try:
    with tempfile.TemporaryDirectory() as tmp:
      workdir = _WORKDIR.value or tmp
      model = Models(workdir)
      for name in _CLAIM.value:
        run_claim(name, model, workdir, _OUT.value)
  except ConfigError as error:
    cli.fail(str(error))


if __name__ == "__main__":
  cli.run(main)
