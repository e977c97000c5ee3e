r"""Claim 2 of Li et al. 2024 (docs/theory.md Part B): out of domain, near-zero error when S1 >= 1, and not below.

    python3 scripts/classify_ood.py [--out=results/classify] [--workdir=DIR] [--seeds=2]

Runs one classification sweep (icl_theory.run_sweep) per model, into WORKDIR/one_layer/
and WORKDIR/gpt/: for each training alpha in (0.5, 0.8) (ours and the paper's), --seeds
runs (seeds 0, 1, ...) of the one-layer softmax attention + MLP (the default config of
icl_theory/configs/classify.py) or of the 3-layer, 2-head GPT-2-style transformer
(model='gpt', Adam), both on the same prompts: the 12 training tasks, l = 20, hinge
loss. Each trained run is evaluated, without retraining, at every alpha' x S1 x ODR
construction of the sweep's evaluation axes, on EVAL_SAMPLES fresh prompts of l = 20
per estimate (out of domain: ODR patterns built by each construction of
icl_theory.classification.task, new irrelevant directions). From the sweeps' rows,
and for the transformer's attention by layer from its trained parameters
(icl_theory.load_run), it writes to OUT/ood/:

  ood_by_s1.csv        per model, training alpha, construction, alpha' and S1: the ICL
                       error and hinge loss (mean over seeds, standard error over
                       seeds, the largest Monte Carlo standard error of a seed), the
                       mean margin, majority vote's error, the attention on the query's
                       pattern (the model's returned attention)
  error_by_alpha.csv   per model, training alpha and alpha': training tasks, unseen tasks
                       (in domain) and out of domain (each construction) at S1 = 1
  what_is_learned.csv  per model and training alpha: attention on the query's pattern
                       and the error where the labels' majority is always wrong
                       (alpha' = 0.3), in and out of domain: attention to the query's
                       pattern classifies there, majority vote errs on every prompt
  runs.csv             every run's rows, per seed (the tables above average them)
  gpt_attention_by_layer.csv
                       the transformer's query attention on its pattern's contexts by
                       layer: the head most on it, the head least on it, their mean
                       (per seed, then averaged), on training and unseen tasks and out
                       of domain at S1 = 1 and 2, alpha' = 0.3 and 0.5
  summary.json         the settings, each run's training figures, each sweep's folder
                       and times, and per model, training alpha, construction and alpha'
                       the largest error and hinge loss over S1 >= 1 and the smallest below
  ood_vs_s1.png        error (solid) and hinge loss (dashed) against S1, a panel per model,
                       training alpha and construction, one colour per alpha'
  error_vs_alpha.png   in-domain against out-of-domain error across alpha', per model and
                       training alpha

alpha' = 0.3 is where the majority of the context labels is always wrong: only
attention to the query's pattern classifies there. alpha' = 0.8 is the seed
paper's figure's setting, where majority vote alone is right. Every construction
is our choice (the paper fixes only non-negative coefficients summing to S1).

With --workdir the sweeps are kept there and a rerun resumes: finished sweeps and
the transformer's attention by layer are read back, unfinished training resumes
from its checkpoint. Another --seeds needs a new --workdir (a sweep's seeds are
part of its config). Most of the time is the transformer's training and evaluation
(25 evaluation points per run, under the default construction only; the training and
unseen tasks are measured once per alpha', as they depend on neither S1 nor the
construction); results/README.md has the measured time.
"""

import functools
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging

import icl_theory
from icl_theory import cli
from icl_theory.engine import files, sharding
from icl_theory.classification import claim_plots
from icl_theory.configs import classify
from icl_theory.classification import experiment as classification
from icl_theory.classification.task import OOD_CONSTRUCTIONS, prompt_tokens, sample_prompts

_OUT = flags.DEFINE_string("out", os.path.join("results", "classify"), "Folder for the ood/ result folder.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the sweeps here (resumable); default: a temporary folder.")
_SEEDS = flags.DEFINE_integer("seeds", 2, "Seeds per model and training alpha (0, 1, ...).", lower_bound=1)

TRAIN_ALPHAS = (0.5, 0.8)      # ours (the labels' majority is a tie) and the paper's (the majority is right)
S1S = (0.5, 0.75, 1.0, 1.5, 2.0)
OOD_ALPHAS = (0.3, 0.5, 0.8)   # alpha' of the S1 curves
ALPHAS = (0.2, 0.3, 0.5, 0.6, 0.8)  # alpha' of the in- against out-of-domain curves
ERROR_BY_ALPHA_S1 = 1.0  # the out-of-domain S1 of error_by_alpha
# The transformer is evaluated under the default construction only (its evaluation dominates the script's time).
MODEL_CONSTRUCTIONS = {"one_layer": OOD_CONSTRUCTIONS, "gpt": ("non_training_pairs",)}
LEARNED_ALPHA = 0.3  # where the labels' majority is always wrong: what_is_learned reads the error there
# The sweeps' evaluation axes are ALPHAS x S1S x constructions: they must hold every point the tables read.
assert set(OOD_ALPHAS) <= set(ALPHAS) and ERROR_BY_ALPHA_S1 in S1S and LEARNED_ALPHA in ALPHAS
PROMPT_LEN = 20
EVAL_SAMPLES = 2048
# gpt: the query's attention by layer and head, in these domains (S1 for ood) and alpha'.
LAYER_DOMAINS = (("train", None), ("unseen", None), ("ood", 1.0), ("ood", 2.0))
LAYER_ALPHAS = (0.3, 0.5)
LAYER_SAMPLES = 2048
_LAYER_STREAM = 17  # the layer-attention prompts' key: eval_key(seed) folded with this
_LAYER_FILE = "attention_by_layer.json"  # kept in the gpt sweep's workdir, read back by a rerun
NEAR_ZERO = 0.05  # an error at or below this counts as near zero in the verdicts (our threshold)
# The two models, as changes to the default classification config.
MODELS = {
    "one_layer": {},
    # Adam: the hinge loss reaches 0 on the training tasks within ~200 steps, after which nothing moves.
    "gpt": dict(model="gpt", optimizer="adam", learning_rate=1e-3, steps=600),
}


def run_config(name: str, seed: int) -> ml_collections.ConfigDict:
  """The model's run config: training at l = PROMPT_LEN, headline errors from EVAL_SAMPLES prompts.

  The single-run tables (test_prompt_lens, test_alphas, test_s1s) are kept short: a sweep does not compute them.
  """
  config = classify.get_config()
  config.update(**MODELS[name])
  config.update(seed=seed, prompt_len=PROMPT_LEN, test_prompt_len=PROMPT_LEN, test_prompt_lens=(PROMPT_LEN,),
                test_alphas=(0.3,), test_s1s=(1.0,), eval_samples=EVAL_SAMPLES, checkpoint_every=200, log_every=100)
  return config


def sweep_config(name: str, seeds: int) -> ml_collections.ConfigDict:
  """The model's classification sweep: `seeds` runs (seeds 0, 1, ...), each evaluated at every alpha' x S1.

  One evaluation point gives the three domains' errors at (alpha', S1): ood_by_s1
  reads the out-of-domain ones at OOD_ALPHAS x S1S, error_by_alpha every domain at
  ALPHAS and S1 = 1. The training and unseen tasks' errors do not depend on S1.
  """
  config = ml_collections.ConfigDict()
  config.experiment = "classification_sweep"  # a label: the experiment trained is base.experiment
  config.base = run_config(name, 0)
  config.alpha_values = TRAIN_ALPHAS
  config.num_seeds = seeds
  config.alpha_test_values = ALPHAS
  config.s1_values = S1S
  config.ood_construction_values = MODEL_CONSTRUCTIONS[name]
  return config


def sweep_rows(name: str, rows: list[dict]) -> list[dict]:
  """runs.csv's rows of one model from its sweep's rows: out of domain over OOD_ALPHAS x S1S (table ood_by_s1),
  then every domain over ALPHAS at S1 = 1 (error_by_alpha), per seed.

  The sweep's keys are those of classification.domain_keys: one per domain, so the
  rows of a domain are paired (the same draws, at different S1 or alpha').
  """
  at = {(row["alpha"], row["seed"], row["alpha_test"], row["s1"], row["ood_construction"]): row for row in rows}
  out = []

  def measure(train_alpha: float, seed: int, table: str, domain: str, alpha: float, s1: float | None,
              construction: str | None) -> dict:
    key = (train_alpha, seed, alpha, ERROR_BY_ALPHA_S1 if s1 is None else s1, construction or constructions[0])
    row, prefix = at[key], classification.PREFIXES[domain]
    return {"model": name, "train_alpha": train_alpha, "seed": seed, "table": table, "domain": domain,
            "ood_construction": construction, "alpha_test": alpha, "s1": s1,
            **{figure: row[f"{prefix}_{figure}"] for figure in classification.FIGURES}}

  constructions = MODEL_CONSTRUCTIONS[name]
  for train_alpha, seed in dict.fromkeys((row["alpha"], row["seed"]) for row in rows):
    status = at[(train_alpha, seed, ALPHAS[0], S1S[0], constructions[0])]["status"]
    if status != "finished":
      logging.warning("%s alpha=%g seed %d: %s; left out of the tables", name, train_alpha, seed, status)
      continue
    out += [measure(train_alpha, seed, "ood_by_s1", "ood", a, s1, c)
            for c in constructions for a in OOD_ALPHAS for s1 in S1S]
    out += [measure(train_alpha, seed, "error_by_alpha", domain, a, ERROR_BY_ALPHA_S1 if domain == "ood" else None,
                    None if domain != "ood" else c)
            for a in ALPHAS for domain in classification.PREFIXES
            for c in (constructions if domain == "ood" else (None,))]
  return out


def _layer_settings() -> dict:
  return files.to_builtin({"domains": LAYER_DOMAINS, "alphas": LAYER_ALPHAS, "samples": LAYER_SAMPLES,
                           "prompt_len": PROMPT_LEN})


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _layer_masses(model: Any, params: Any, task: Any, key: jax.Array, alpha: float, domain: str) -> jax.Array:
  """Per layer and head, the query's mean attention on its pattern's contexts: (layers, heads).

  Jitted once per (model, alpha, domain), shared by the model's seeds.
  """
  prompts = sample_prompts(key, task, LAYER_SAMPLES, PROMPT_LEN, alpha, domain)
  _, state = model.apply({"params": params}, *prompt_tokens(prompts, task.q), mutable=["intermediates"])
  return jnp.stack([(attention_BxHxL * prompts.same_pattern[:, None, :]).sum(-1).mean(0)
                    for (attention_BxHxL,) in (state["intermediates"][f"attention_layer{k}"]
                                               for k in range(model.num_layers))])


def layer_attention(run: icl_theory.LoadedRun) -> list[dict]:
  """gpt only: per layer, the query's attention on its pattern's contexts, for the head most and least on it.

  The model returns only its last layer's head mean; the mechanism may sit in an
  earlier layer or in one head. Heads are not matched across seeds (which head
  does what is a seed's accident), so each seed reports its max and min head.
  Out of domain, the patterns at S1 are those of the sweep's rows (classification.ood_task).
  """
  config = run.config
  model = classification.make_model(config)
  root = jax.random.fold_in(classification.eval_key(config.seed), _LAYER_STREAM)
  rows = []
  for i, (domain, s1) in enumerate(LAYER_DOMAINS):
    if domain == "ood":
      at_s1 = ml_collections.ConfigDict(config.to_dict())
      at_s1.s1 = s1
      task = classification.ood_task(run.task, at_s1)
    else:
      task = run.task
    for alpha in LAYER_ALPHAS:
      mass_NxH = np.asarray(_layer_masses(model, run.params, task, jax.random.fold_in(root, i), alpha, domain))
      rows += [{"domain": domain, "s1": s1, "alpha_test": alpha, "layer": layer, "head_max": float(m.max()),
                "head_min": float(m.min()), "head_mean": float(m.mean())} for layer, m in enumerate(mass_NxH)]
  return rows


def run_model(name: str, seeds: int, workdir: str) -> tuple[list[dict], list[dict], list[dict], dict]:
  """Runs (or resumes) the model's sweep into workdir/name and reads it.

  Returns runs.csv's rows of the model; for gpt the rows of `layer_attention` per
  run (else []; kept in the sweep's folder and read back by a rerun); each run's
  entry of summary.json's "runs"; the model's entry of its "sweeps".
  """
  sweep_dir = os.path.join(workdir, name)
  config = sweep_config(name, seeds)
  t0 = time.perf_counter()
  rows = icl_theory.run_sweep(config, sweep_dir)
  sweep_seconds = time.perf_counter() - t0
  runs_of = [(alpha, config.base.seed + i) for alpha in TRAIN_ALPHAS for i in range(seeds)]
  loaded = {run: icl_theory.load_run(sweep_dir, {"alpha": run[0], "seed": run[1]}) for run in runs_of}
  layers = []
  if config.base.model == "gpt":
    path = os.path.join(sweep_dir, _LAYER_FILE)
    settings = {**_layer_settings(), "runs": [list(run) for run in runs_of]}
    if os.path.exists(path) and files.read_json(path)["settings"] == settings:
      layers = files.read_json(path)["rows"]
    else:
      layers = [{"model": name, "train_alpha": alpha, "seed": seed, **row}
                for alpha, seed in runs_of for row in layer_attention(loaded[(alpha, seed)])]
      files.write_json(path, {"settings": settings, "rows": layers})
  finished = {run for run in runs_of if loaded[run].summary[0]["status"] == "finished"}
  layers = [row for row in layers if (row["train_alpha"], row["seed"]) in finished]
  runs = [{"model": name, "train_alpha": alpha, "seed": seed,
           "description": classification.describe_model(loaded[(alpha, seed)].config),
           **{k: loaded[(alpha, seed)].summary[0][k] for k in ("final_train_loss", "steps", "status")}}
          for alpha, seed in runs_of]
  record = {"model": name, "workdir": name, "runs": len(runs_of),
            "evaluation_points": len(ALPHAS) * len(S1S) * len(MODEL_CONSTRUCTIONS[name]),
            # Each training alpha is one group (its seeds train together): its training time.
            "train_seconds": {str(alpha): (loaded[(alpha, 0)].history[-1]["elapsed_seconds"]
                                           if loaded[(alpha, 0)].history else None) for alpha in TRAIN_ALPHAS},
            "seconds_this_process": sweep_seconds}
  logging.info("%s: %d runs x %d evaluation points in %s (%.0f s in this process)", name, len(runs_of),
               record["evaluation_points"], sweep_dir, sweep_seconds)
  return sweep_rows(name, rows), layers, runs, record


def aggregate_layers(rows: list[dict]) -> list[dict]:
  """Mean over seeds per (model, training alpha, domain, S1, alpha', layer) of each seed's max-head, min-head and
  head-mean mass."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["model"], row["train_alpha"], row["domain"], row["s1"], row["alpha_test"], row["layer"]),
                      []).append(row)
  return [{"model": model, "train_alpha": train_alpha, "domain": domain, "s1": s1, "alpha_test": alpha,
           "layer": layer, "seeds": len(group),
           **{k: float(np.mean([r[k] for r in group])) for k in ("head_max", "head_min", "head_mean")}}
          for (model, train_alpha, domain, s1, alpha, layer), group in groups.items()]


def _mean_over_seeds(group: list[dict], figure: str) -> dict:
  values = np.array([r[figure] for r in group], np.float64)
  return {figure: values.mean(),
          f"{figure}_se_seeds": values.std(ddof=1) / np.sqrt(len(group)) if len(group) > 1 else None}


def aggregate(rows: list[dict], table: str) -> list[dict]:
  """Mean over seeds per (model, training alpha, domain, construction, alpha', S1), with standard errors over seeds."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    if row["table"] == table:
      groups.setdefault((row["model"], row["train_alpha"], row["domain"], row["ood_construction"], row["alpha_test"],
                         row["s1"]), []).append(row)
  out = []
  for (model, train_alpha, domain, construction, alpha, s1), group in groups.items():
    errors = np.array([r["error"] for r in group])
    out.append({"model": model, "train_alpha": train_alpha, "domain": domain, "ood_construction": construction,
                "alpha_test": alpha, "s1": s1, "seeds": len(group),
                **_mean_over_seeds(group, "error"),
                "error_stderr_mc_max": max(r["error_stderr"] for r in group),
                "error_min_seed": errors.min(), "error_max_seed": errors.max(),
                **_mean_over_seeds(group, "hinge"), "margin": float(np.mean([r["margin"] for r in group])),
                "majority_vote_error": float(np.mean([r["majority_vote_error"] for r in group])),
                "attention_same": float(np.mean([r["attention_same"] for r in group]))})
  return out


def verdicts(by_s1: list[dict]) -> list[dict]:
  """Per model, training alpha, construction and alpha': the largest mean error and hinge loss over S1 >= 1, the
  smallest below, against NEAR_ZERO."""
  out = []
  for model, train_alpha, construction in dict.fromkeys((r["model"], r["train_alpha"], r["ood_construction"])
                                                        for r in by_s1):
    for alpha in OOD_ALPHAS:
      curve = [r for r in by_s1 if (r["model"], r["train_alpha"], r["ood_construction"], r["alpha_test"]) ==
               (model, train_alpha, construction, alpha)]
      above, below = [r for r in curve if r["s1"] >= 1], [r for r in curve if r["s1"] < 1]
      out.append({"model": model, "train_alpha": train_alpha, "ood_construction": construction, "alpha_test": alpha,
                  "max_error_s1_at_least_1": max(r["error"] for r in above),
                  "min_error_s1_below_1": min(r["error"] for r in below),
                  "max_hinge_s1_at_least_1": max(r["hinge"] for r in above),
                  "min_hinge_s1_below_1": min(r["hinge"] for r in below),
                  "majority_vote_error": float(np.mean([r["majority_vote_error"] for r in curve])),
                  "near_zero_for_s1_at_least_1": bool(max(r["error"] for r in above) <= NEAR_ZERO),
                  "not_near_zero_below_1": bool(min(r["error"] for r in below) > NEAR_ZERO)})
  return out


def what_is_learned(by_alpha: list[dict]) -> list[dict]:
  """Per model and training alpha: does it read the query's pattern or the labels' majority?

  At alpha' = LEARNED_ALPHA the majority of the context labels is always wrong (majority vote's error is 1), so a
  model that votes errs on every prompt and one that attends to the query's pattern on none. At alpha' = 0.5 the
  labels tie (majority vote's error is 1/2): a model that errs there on no prompt reads the query's pattern at
  least to break ties. Beside them the attention on the query's pattern at alpha' = 0.5.
  """
  out = []
  for model, train_alpha in dict.fromkeys((r["model"], r["train_alpha"]) for r in by_alpha):
    row = {"model": model, "train_alpha": train_alpha}
    for r in by_alpha:
      if (r["model"], r["train_alpha"]) != (model, train_alpha):
        continue
      name = r["domain"] if r["domain"] != "ood" else f"ood_{r['ood_construction']}"
      if r["alpha_test"] == LEARNED_ALPHA:
        row[f"{name}_error_at_{LEARNED_ALPHA:g}"] = r["error"]
        row[f"{name}_hinge_at_{LEARNED_ALPHA:g}"] = r["hinge"]
        row[f"majority_vote_error_at_{LEARNED_ALPHA:g}"] = r["majority_vote_error"]
      if r["alpha_test"] == 0.5:
        row[f"{name}_error_at_0.5"] = r["error"]
        row[f"{name}_attention_same_at_0.5"] = r["attention_same"]
    wrong_majority, tie = row[f"unseen_error_at_{LEARNED_ALPHA:g}"], row["unseen_error_at_0.5"]
    if wrong_majority <= NEAR_ZERO:
      row["reads"] = "the query's pattern (against the majority)"
    elif wrong_majority >= 1 - NEAR_ZERO:
      row["reads"] = ("the labels' majority, the query's pattern breaking ties" if tie <= NEAR_ZERO
                      else "the labels' majority")
    else:
      row["reads"] = "a mixture"
    out.append(row)
  return out


def main(argv) -> None:
  cli.only_flags(argv)
  if _OUT.value and os.path.isfile(_OUT.value):
    cli.fail(f"out={_OUT.value!r} is not allowed: a folder, not a file")
  sharding.use_cpu_cores()  # one CPU device per core: a sweep group's runs are split over them
  t_start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    workdir = _WORKDIR.value or tmp
    try:
      done = [run_model(name, _SEEDS.value, workdir) for name in MODELS]
    except icl_theory.ConfigError as error:
      hint = " (this script has no --overwrite)" if "--overwrite" in str(error) else ""
      cli.fail(f"{error}{hint}")
  rows = [row for model_rows, _, _, _ in done for row in model_rows]
  by_layer = aggregate_layers([row for _, layers, _, _ in done for row in layers])
  by_s1, by_alpha = aggregate(rows, "ood_by_s1"), aggregate(rows, "error_by_alpha")
  target = os.path.join(_OUT.value, "ood")
  os.makedirs(target, exist_ok=True)
  files.write_csv(os.path.join(target, "ood_by_s1.csv"), by_s1, significant=6)
  files.write_csv(os.path.join(target, "error_by_alpha.csv"), by_alpha, significant=6)
  learned = what_is_learned(by_alpha)
  files.write_csv(os.path.join(target, "what_is_learned.csv"), learned, significant=6)
  files.write_csv(os.path.join(target, "runs.csv"), rows, significant=6)
  files.write_csv(os.path.join(target, "gpt_attention_by_layer.csv"), by_layer, significant=6)
  found = verdicts(by_s1)
  settings = {"prompt_len": PROMPT_LEN, "eval_samples_per_estimate": EVAL_SAMPLES, "seeds": _SEEDS.value,
              "train_alphas": TRAIN_ALPHAS, "near_zero": NEAR_ZERO, "s1s": S1S, "ood_alphas": OOD_ALPHAS,
              "alphas": ALPHAS, "constructions": MODEL_CONSTRUCTIONS, "layer_attention": _layer_settings(),
              "models": {name: {"description": classification.describe_model(run_config(name, 0)),
                                "config_changes": changes} for name, changes in MODELS.items()}}
  files.write_json(os.path.join(target, "summary.json"), {
      "settings": settings, "verdicts": found, "what_is_learned": learned,
      "runs": [run for _, _, runs, _ in done for run in runs],
      "sweeps": [record for _, _, _, record in done],
      "wall_seconds_this_process": time.perf_counter() - t_start})  # a resumed run: only what it redid
  claim_plots.plot_ood_vs_s1(by_s1, os.path.join(target, "ood_vs_s1.png"))
  claim_plots.plot_error_vs_alpha(by_alpha, os.path.join(target, "error_vs_alpha.png"))
  for v in found:
    logging.info("%-9s alpha=%.1f %-18s alpha'=%.1f: max error (hinge) over S1 >= 1: %.4f (%.3f); min below: "
                 "%.4f (%.3f); majority vote %.3f", v["model"], v["train_alpha"], v["ood_construction"],
                 v["alpha_test"], v["max_error_s1_at_least_1"], v["max_hinge_s1_at_least_1"],
                 v["min_error_s1_below_1"], v["min_hinge_s1_below_1"], v["majority_vote_error"])
  logging.info("written to %s in %.0f s", target, time.perf_counter() - t_start)


if __name__ == "__main__":
  cli.run(main)
