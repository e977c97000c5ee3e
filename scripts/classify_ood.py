r"""Claim 2 of Li et al. 2024 (THEORY.md Part B): out of domain, near-zero error when S1 >= 1, and not below.

    python3 scripts/classify_ood.py [--out=results/classify] [--workdir=DIR] [--seeds=3]

Trains, per seed, the one-layer softmax attention + MLP (the default config of
icl_theory/configs/classify.py) and the 3-layer, 2-head GPT-2-style transformer
(model='gpt', Adam), both on the same prompts: the 12 training tasks, alpha = 1/2,
l = 20, hinge loss. Then, on fresh prompts of l = 20 (out of domain: ODR patterns
S1/2 (mu_2k + mu_2k+1), new irrelevant directions), writes to OUT/ood/:

  ood_by_s1.csv        per model, alpha' and S1: the ICL error (mean over seeds, its
                       standard error over seeds, and the largest Monte Carlo
                       standard error of a seed), majority vote's error, the attention
                       on the query's pattern (the model's returned attention)
  error_by_alpha.csv   per model and alpha': training tasks, unseen tasks (in domain)
                       and out of domain at S1 = 1, beside majority vote
  runs.csv             every run's rows, per seed (the tables above average them)
  gpt_attention_by_layer.csv
                       the transformer's query attention on its pattern's contexts by
                       layer: the head most on it, the head least on it, their mean
                       (per seed, then averaged), on training and unseen tasks and out
                       of domain at S1 = 1 and 2, alpha' = 0.3 and 0.5
  summary.json         the settings, each run's training figures, and per model and
                       alpha' the largest error over S1 >= 1 and the smallest below
  ood_vs_s1.png        error against S1 per model, one line per alpha' (thin: single seeds),
                       majority vote dashed
  error_vs_alpha.png   in-domain against out-of-domain error across alpha', per model

alpha' = 0.3 is where the majority of the context labels is always wrong: only
attention to the query's pattern classifies there. alpha' = 0.8 is the seed
paper's figure's setting, where majority vote alone is right.

With --workdir the runs are kept there and a rerun resumes: finished evaluations
are read back, unfinished training resumes from its checkpoint. About 370
CPU-seconds, most of them the transformer's evaluation (16.5 minutes of wall time
on 2 CPU cores shared with three other jobs).
"""

import functools
import os
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

import icl_theory
from icl_theory.engine import files
from icl_theory.classification import plots
from icl_theory.configs import classify
from icl_theory.classification import experiment as classification
from icl_theory.classification.task import prompt_tokens, sample_prompts

_OUT = flags.DEFINE_string("out", os.path.join("results", "classify"), "Folder for the ood/ result folder.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the runs here (resumable); default: a temporary folder.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per model (0, 1, ...).", lower_bound=1)

S1S = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
OOD_ALPHAS = (0.3, 0.5, 0.8)   # alpha' of the S1 curves
ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # alpha' of the in- against out-of-domain curves
PROMPT_LEN = 20
EVAL_SAMPLES = 4096
# gpt: the query's attention by layer and head, in these domains (S1 for ood) and alpha'.
LAYER_DOMAINS = (("train", None), ("unseen", None), ("ood", 1.0), ("ood", 2.0))
LAYER_ALPHAS = (0.3, 0.5)
LAYER_SAMPLES = 2048
_LAYER_STREAM = 17  # the layer-attention prompts' key: eval_key(seed) folded with this
NEAR_ZERO = 0.05  # an error at or below this counts as near zero in the verdicts
# The two models, as changes to the default classification config.
MODELS = {
    "one_layer": {},
    # Adam: the hinge loss reaches 0 on the training tasks within ~200 steps, after which nothing moves.
    "gpt": dict(model="gpt", optimizer="adam", learning_rate=1e-3, steps=600),
}


def run_config(name: str, seed: int) -> ml_collections.ConfigDict:
  """The model's training config; its own evaluation is kept small (this script evaluates separately)."""
  config = classify.get_config()
  config.update(**MODELS[name])
  config.update(seed=seed, prompt_len=PROMPT_LEN, test_prompt_len=PROMPT_LEN, test_prompt_lens=(PROMPT_LEN,),
                test_alphas=(0.3,), test_s1s=(1.0,), eval_samples=2048, checkpoint_every=200, log_every=100)
  return config


@functools.lru_cache(maxsize=None)
def _evaluator(model: Any) -> classification.Evaluator:
  """One Evaluator (and its compiled programs) per model, shared by the model's seeds."""
  return classification.Evaluator(model, EVAL_SAMPLES)


def evaluate_run(result: Any, config: ml_collections.ConfigDict) -> list[dict]:
  """The run's rows: out of domain over S1 x OOD_ALPHAS, and every domain over ALPHAS (OOD at S1 = 1).

  Keys as in classification.domain_keys: one per domain, so the rows of a domain are
  paired (the same draws, at different S1 or alpha').
  """
  evaluator = _evaluator(classification.make_model(config))
  key = classification.domain_keys(classification.eval_key(config.seed))

  def measure(table: str, domain: str, alpha: float, s1: float | None) -> dict:
    task = result.task.with_s1(s1) if domain == "ood" else result.task
    values = evaluator(result.params, task, key[domain], PROMPT_LEN, alpha, domain, "v")
    return {"table": table, "domain": domain, "alpha_test": alpha, "s1": s1, "error": values["v_error"],
            "error_stderr": values["v_error_stderr"], "majority_vote_error": values["v_majority_vote_error"],
            "attention_same": values["v_attention_same"]}

  rows = [measure("ood_by_s1", "ood", a, s1) for a in OOD_ALPHAS for s1 in S1S]
  rows += [measure("error_by_alpha", domain, a, 1.0 if domain == "ood" else None)
           for a in ALPHAS for domain in classification.PREFIXES]
  return rows


def _layer_settings() -> dict:
  return files.to_builtin({"domains": LAYER_DOMAINS, "alphas": LAYER_ALPHAS, "samples": LAYER_SAMPLES,
                           "prompt_len": PROMPT_LEN})


def _evaluation() -> dict:
  """What evaluate_run measures: a kept record of other settings is not read back."""
  return files.to_builtin({"s1s": S1S, "ood_alphas": OOD_ALPHAS, "alphas": ALPHAS, "prompt_len": PROMPT_LEN,
                           "eval_samples": EVAL_SAMPLES})


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


def layer_attention(result: Any, config: ml_collections.ConfigDict) -> list[dict]:
  """gpt only: per layer, the query's attention on its pattern's contexts, for the head most and least on it.

  The model returns only its last layer's head mean; the mechanism may sit in an
  earlier layer or in one head. Heads are not matched across seeds (which head
  does what is a seed's accident), so each seed reports its max and min head.
  """
  model = classification.make_model(config)
  root = jax.random.fold_in(classification.eval_key(config.seed), _LAYER_STREAM)
  rows = []
  for i, (domain, s1) in enumerate(LAYER_DOMAINS):
    task = result.task.with_s1(s1) if domain == "ood" else result.task
    for alpha in LAYER_ALPHAS:
      mass_NxH = np.asarray(_layer_masses(model, result.params, task, jax.random.fold_in(root, i), alpha, domain))
      rows += [{"domain": domain, "s1": s1, "alpha_test": alpha, "layer": layer, "head_max": float(m.max()),
                "head_min": float(m.min()), "head_mean": float(m.mean())} for layer, m in enumerate(mass_NxH)]
  return rows


def run_model(name: str, seed: int, workdir: str) -> tuple[dict, list[dict]]:
  """Trains (or resumes) one run and evaluates it; finished records are kept in its folder and read back.

  Returns the record of `evaluate_run` and, for gpt, the rows of `layer_attention` (else []).
  """
  run_dir = os.path.join(workdir, name, f"seed{seed}")
  record_path, layers_path = os.path.join(run_dir, "ood_rows.json"), os.path.join(run_dir, "attention_by_layer.json")
  config = run_config(name, seed)
  record = layers = None
  if os.path.exists(record_path):
    record = files.read_json(record_path)
    if record.get("config") != files.to_builtin(config.to_dict()) or record.get("evaluation") != _evaluation():
      raise icl_theory.ConfigError(f"workdir={workdir!r} holds {name} seed {seed} of other settings: "
                                   "use a new --workdir")
    if os.path.exists(layers_path) and files.read_json(layers_path)["settings"] == _layer_settings():
      layers = files.read_json(layers_path)["rows"]
  wants_layers = config.model == "gpt"
  if record is not None and (layers is not None or not wants_layers):
    logging.info("%s seed %d: read back from %s", name, seed, run_dir)
    return record, layers or []
  result = icl_theory.train(config, run_dir)
  if record is None:
    t0 = time.perf_counter()
    rows = evaluate_run(result, config)
    summary = result.summary
    record = {"model": name, "seed": seed, "description": classification.describe_model(config),
              "config": config.to_dict(), "evaluation": _evaluation(),
              "final_train_loss": summary["final_train_loss"], "steps": summary["steps"],
              "train_seconds": summary["train_seconds"], "eval_seconds": time.perf_counter() - t0,
              "rows": [{"model": name, "seed": seed, **row} for row in rows]}
    files.write_json(record_path, record)
    logging.info("%s seed %d: trained and evaluated (%.0f s evaluating)", name, seed, record["eval_seconds"])
  if wants_layers:
    layers = [{"model": name, "seed": seed, **row} for row in layer_attention(result, config)]
    files.write_json(layers_path, {"settings": _layer_settings(), "rows": layers})
  return record, layers or []


def aggregate_layers(rows: list[dict]) -> list[dict]:
  """Mean over seeds per (domain, S1, alpha', layer) of each seed's max-head, min-head and head-mean mass."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["model"], row["domain"], row["s1"], row["alpha_test"], row["layer"]), []).append(row)
  return [{"model": model, "domain": domain, "s1": s1, "alpha_test": alpha, "layer": layer, "seeds": len(group),
           **{k: float(np.mean([r[k] for r in group])) for k in ("head_max", "head_min", "head_mean")}}
          for (model, domain, s1, alpha, layer), group in groups.items()]


def aggregate(rows: list[dict], table: str) -> list[dict]:
  """Mean over seeds per (model, domain, alpha', S1), with the standard error over seeds."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    if row["table"] == table:
      groups.setdefault((row["model"], row["domain"], row["alpha_test"], row["s1"]), []).append(row)
  out = []
  for (model, domain, alpha, s1), group in groups.items():
    errors = np.array([r["error"] for r in group])
    out.append({"model": model, "domain": domain, "alpha_test": alpha, "s1": s1, "seeds": len(group),
                "error": errors.mean(),
                "error_se_seeds": errors.std(ddof=1) / np.sqrt(len(group)) if len(group) > 1 else None,
                "error_stderr_mc_max": max(r["error_stderr"] for r in group),
                "error_min_seed": errors.min(), "error_max_seed": errors.max(),
                "majority_vote_error": float(np.mean([r["majority_vote_error"] for r in group])),
                "attention_same": float(np.mean([r["attention_same"] for r in group]))})
  return out


def verdicts(by_s1: list[dict]) -> list[dict]:
  """Per model and alpha': the largest mean error over S1 >= 1, the smallest below, against NEAR_ZERO."""
  out = []
  for model in MODELS:
    for alpha in OOD_ALPHAS:
      curve = [r for r in by_s1 if r["model"] == model and r["alpha_test"] == alpha]
      at_least_one = max(r["error"] for r in curve if r["s1"] >= 1)
      below_one = min(r["error"] for r in curve if r["s1"] < 1)
      out.append({"model": model, "alpha_test": alpha, "max_error_s1_at_least_1": at_least_one,
                  "min_error_s1_below_1": below_one,
                  "majority_vote_error": float(np.mean([r["majority_vote_error"] for r in curve])),
                  "near_zero_for_s1_at_least_1": bool(at_least_one <= NEAR_ZERO),
                  "not_near_zero_below_1": bool(below_one > NEAR_ZERO)})
  return out


def main(argv) -> None:
  if len(argv) > 1:
    print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
    sys.exit(2)
  if _OUT.value and os.path.isfile(_OUT.value):
    print(f"error: out={_OUT.value!r} is not allowed: a folder, not a file", file=sys.stderr)
    sys.exit(2)
  t_start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    workdir = _WORKDIR.value or tmp
    try:
      done = [run_model(name, seed, workdir) for name in MODELS for seed in range(_SEEDS.value)]
    except icl_theory.ConfigError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
  records = [record for record, _ in done]
  rows = [row for record in records for row in record["rows"]]
  by_layer = aggregate_layers([row for _, layers in done for row in layers])
  by_s1, by_alpha = aggregate(rows, "ood_by_s1"), aggregate(rows, "error_by_alpha")
  target = os.path.join(_OUT.value, "ood")
  os.makedirs(target, exist_ok=True)
  files.write_csv(os.path.join(target, "ood_by_s1.csv"), by_s1, significant=6)
  files.write_csv(os.path.join(target, "error_by_alpha.csv"), by_alpha, significant=6)
  files.write_csv(os.path.join(target, "runs.csv"), rows, significant=6)
  files.write_csv(os.path.join(target, "gpt_attention_by_layer.csv"), by_layer, significant=6)
  found = verdicts(by_s1)
  settings = {"prompt_len": PROMPT_LEN, "eval_samples_per_estimate": EVAL_SAMPLES, "seeds": _SEEDS.value,
              "near_zero": NEAR_ZERO, "s1s": S1S, "ood_alphas": OOD_ALPHAS, "alphas": ALPHAS,
              "layer_attention": _layer_settings(),
              "models": {name: {"description": classification.describe_model(run_config(name, 0)),
                                "config_changes": changes} for name, changes in MODELS.items()}}
  files.write_json(os.path.join(target, "summary.json"), {
      "settings": settings, "verdicts": found,
      "runs": [{k: v for k, v in record.items() if k not in ("rows", "config", "evaluation")} for record in records],
      "wall_seconds_this_process": time.perf_counter() - t_start})  # a resumed run: only what it redid
  plots.plot_ood_vs_s1(by_s1, os.path.join(target, "ood_vs_s1.png"), [r for r in rows if r["table"] == "ood_by_s1"])
  plots.plot_error_vs_alpha(by_alpha, os.path.join(target, "error_vs_alpha.png"))
  for v in found:
    logging.info("%-9s alpha'=%.1f: max error over S1 >= 1: %.4f; min error below: %.4f (majority vote %.3f)",
                 v["model"], v["alpha_test"], v["max_error_s1_at_least_1"], v["min_error_s1_below_1"],
                 v["majority_vote_error"])
  logging.info("written to %s in %.0f s", target, time.perf_counter() - t_start)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
