"""The classification experiment on the engine: a group's evaluation is each run's, evaluation points move only
what they should, and a sweep writes its table and figures."""

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.classification import experiment as classification
from icl_theory.classification import plots
from icl_theory.classification.experiment import EXPERIMENT
from icl_theory.classification.task import (DOMAINS, OOD_CONSTRUCTIONS, num_same, outcome_sums, prompt_tokens,
                                             sample_prompts_by_count)
from icl_theory.configs import classify, classify_sweep
from icl_theory.engine import sweep as sweeps
from icl_theory.engine.group import Group, with_fields

# A tiny run: 60 steps (the numbers need not be good, only reproducible), short test tables.
_TINY = dict(prompt_len=10, test_prompt_len=10, batch_size=64, steps=60, learning_rate=0.2, warmup_steps=10,
             log_every=30, checkpoint_every=0, eval_samples=512, test_prompt_lens=(10,), test_alphas=(0.5,),
             test_s1s=(1.0,))


def _config(**fields):
  config = classify.get_config()
  config.update(**_TINY)
  config.update(**fields)
  return config


@pytest.fixture(scope="module")
def trained():
  """Two runs (seeds 0 and 1) trained as one group, without a workdir."""
  group = Group(EXPERIMENT, [_config(seed=0), _config(seed=1)])
  return group, group.fit(None).state.params


def _run(tree, r):
  return jax.tree.map(lambda x: x[r:r + 1], tree)


@pytest.mark.slow  # 2.5 s with a cold compile cache, beside the shared fixture's training
def test_a_groups_evaluation_is_each_runs_evaluation_alone(trained):
  group, params = trained
  (rows,) = group.evaluate(params)
  assert len(rows) == 2
  for r, config in enumerate(group.configs):
    (alone,), = Group(EXPERIMENT, [config]).evaluate(_run(params, r))
    assert alone == rows[r]
  assert rows[0]["unseen_task_attention_same"] != rows[1]["unseen_task_attention_same"]  # two seeds, two runs
  for prefix in classification.PREFIXES.values():
    for figure in ("error", "error_stderr", "majority_vote_error", "majority_vote_error_stderr", "attention_same"):
      assert np.isfinite(rows[0][f"{prefix}_{figure}"])
  assert rows[0]["eval_prompts"] == 512 and rows[0]["alpha_test_effective"] == 0.5
  assert rows[0]["large_neurons_cos_mean_idr"] is not None


@pytest.mark.slow  # 5-8 s cold; the fast set evaluates the same group (test_an_s1_point..., test_details...)
def test_headline_is_the_evaluator_on_the_runs_task_and_its_seeds_evaluation_key(trained):
  """The numbers of the old `classification.evaluate`: the run's own task, keys fold_in(eval_key(seed), domain)."""
  group, params = trained
  (rows,) = group.evaluate(params)
  config = group.configs[1]
  run_params = jax.tree.map(lambda x: x[1], params)
  task = classification.build_task(config)
  root = jax.random.fold_in(jax.random.PRNGKey(1), 1_000_003)
  evaluator = classification.Evaluator(classification.make_model(config), config.eval_samples)
  same = num_same(config.test_prompt_len, config.alpha_test)
  model = classification.make_model(config)
  for i, (domain, prefix) in enumerate(classification.PREFIXES.items()):
    key = jax.random.fold_in(root, i)
    # As one program per domain computed them: the domain named (its own tables, static), chunk by chunk,
    # not the evaluator's one program for every domain (its index traced).
    sums = 0.0
    for chunk_key in jax.random.split(key, evaluator.num_chunks):
      prompts = sample_prompts_by_count(chunk_key, task, evaluator.chunk, config.test_prompt_len, same, domain)
      sums = sums + np.asarray(outcome_sums(*model.apply({"params": run_params}, *prompt_tokens(prompts, task.q)),
                                            prompts), np.float64)
    assert rows[1][f"{prefix}_error"] == sums[0] / evaluator.num_samples
    assert rows[1][f"{prefix}_majority_vote_error"] == sums[2] / evaluator.num_samples
    assert rows[1][f"{prefix}_attention_same"] == pytest.approx(sums[4] / evaluator.num_samples, rel=1e-6)
  alignment = classification.neuron_alignment(run_params, task)
  assert rows[1]["large_neurons_cos_mean_idr"] == alignment["large_neurons_cos_mean_idr"]


@pytest.mark.slow  # 3 s with a cold compile cache
def test_b_evaluation_points_change_only_what_they_should(trained):
  group, params = trained
  base, s1, alpha, length = group.evaluate(params, [{}, {"s1": 2.0}, {"alpha_test": 0.3}, {"test_prompt_len": 20}])
  figures = ("error", "error_stderr", "majority_vote_error", "majority_vote_error_stderr", "attention_same")
  for r in range(2):
    # s1 moves the out-of-domain patterns only.
    for prefix in ("train_task", "unseen_task"):
      for figure in figures:
        assert s1[r][f"{prefix}_{figure}"] == base[r][f"{prefix}_{figure}"]
    assert s1[r]["ood_attention_same"] != base[r]["ood_attention_same"]
    assert s1[r]["alpha_test_effective"] == base[r]["alpha_test_effective"]
    # alpha': 3 of 10 contexts carry the query's pattern, so the labels' majority is always wrong (0.5: a tie).
    assert alpha[r]["alpha_test_effective"] == 0.3 and base[r]["alpha_test_effective"] == 0.5
    for prefix in classification.PREFIXES.values():
      assert alpha[r][f"{prefix}_majority_vote_error"] == 1.0 and base[r][f"{prefix}_majority_vote_error"] == 0.5
      assert length[r][f"{prefix}_attention_same"] != base[r][f"{prefix}_attention_same"]
    # Nothing but the evaluation moves: the parameters' own figures stay.
    for point in (s1, alpha, length):
      assert point[r]["large_neurons_cos_signed_q"] == base[r]["large_neurons_cos_signed_q"]
      assert point[r]["eval_prompts"] == base[r]["eval_prompts"]


@pytest.mark.slow  # 3 s cold; the fast set keeps the other evaluation points' checks on the same fixture
def test_an_s1_point_equals_a_run_built_with_that_s1(trained):
  """A sweep's s1 point and a single run's s1 field give the same row (s1 never enters training)."""
  group, params = trained
  (at_point,), = Group(EXPERIMENT, [group.configs[0]]).evaluate(_run(params, 0), [{"s1": 2.0}])
  (built,), = Group(EXPERIMENT, [with_fields(group.configs[0], {"s1": 2.0})]).evaluate(_run(params, 0))
  assert at_point == built


def test_the_evaluator_reuses_the_figures_of_the_same_inputs_only(trained):
  """A repeated call (the headline's setting is a row of three tables) runs no program; any other input does."""
  group, params = trained
  config = group.configs[0]
  run_params = jax.tree.map(lambda x: np.asarray(x[0]), params)
  task = classification.build_task(config)
  evaluator = classification.Evaluator(classification.make_model(config), config.eval_samples)
  calls = []
  program = evaluator.program

  def counted(*args):  # records the domain of each program run
    compiled = program(*args)
    return lambda *inputs: calls.append(DOMAINS[int(inputs[-1])]) or compiled(*inputs)

  evaluator.program = counted
  key = classification.eval_key(0)
  first = evaluator(run_params, task, key, 10, 0.5, "unseen", "unseen_task")
  again = evaluator(jax.tree.map(jnp.asarray, run_params), task, key, 10, 0.5, "unseen", "table")
  assert calls == ["unseen"] and again == {k.replace("unseen_task", "table"): v for k, v in first.items()}
  # Another key, setting, domain or task is computed afresh.
  evaluator(run_params, task, jax.random.fold_in(key, 1), 10, 0.5, "unseen", "unseen_task")
  evaluator(run_params, task, key, 10, 0.3, "unseen", "unseen_task")
  evaluator(run_params, task, key, 10, 0.5, "ood", "ood")
  evaluator(run_params, task.with_ood(OOD_CONSTRUCTIONS[0], 1.5), key, 10, 0.5, "ood", "ood")
  moved = jax.tree.map(lambda x: x, run_params)
  moved["W_V"] = moved["W_V"] + np.float32(1e-3)
  assert evaluator(moved, task, key, 10, 0.5, "unseen", "unseen_task") != first
  assert calls == ["unseen", "unseen", "unseen", "ood", "ood", "unseen"]


def test_details_and_summary_header(trained):
  group, params = trained
  config = group.configs[0]
  task = EXPERIMENT.validate(config)
  details = EXPERIMENT.details(jax.tree.map(lambda x: x[0], params), task, config, classification.eval_key(0))
  per_construction = {f"ood_{c}_{f}" for c in OOD_CONSTRUCTIONS for f in classification.FIGURES}
  assert set(details) == {"error_by_test_prompt_len", "error_by_alpha_test", "ood_error_by_s1"} | per_construction
  (row,), = Group(EXPERIMENT, [config]).evaluate(_run(params, 0))
  # The headline's out-of-domain figures are those of its construction, on the same draws.
  for figure in classification.FIGURES:
    assert details[f"ood_{config.ood_construction}_{figure}"] == row[f"ood_{figure}"]
  assert {r["ood_construction"] for r in details["ood_error_by_s1"]} == set(OOD_CONSTRUCTIONS)
  # The tables' row at the headline's setting is the headline (same keys, paired draws).
  table_row, = details["error_by_test_prompt_len"]
  assert table_row["unseen_task_error"] == row["unseen_task_error"]
  assert table_row["ood_attention_same"] == row["ood_attention_same"]
  assert EXPERIMENT.summary_header(task, config) == {"num_train_tasks": 12, "num_unseen_tasks": 18,
                                                     "num_ood_tasks": 6}
  assert "training tasks" in EXPERIMENT.describe(config, task)


def _rows(**fixed):
  """Synthetic sweep rows: two training alphas x two seeds x alpha' in (0.3, 0.5); one run diverged."""
  rows = []
  for alpha in (0.5, 0.8):
    for seed in (0, 1):
      for alpha_test in (0.3, 0.5):
        error = 0.1 * seed + (0.5 if alpha == 0.8 and alpha_test == 0.3 else 0.0)
        rows.append({"alpha": alpha, "seed": seed, "alpha_test": alpha_test, "s1": 1.0,
                     **{f"{p}_{f}": error for p in ("train_task", "unseen_task", "ood")
                        for f in ("error", "error_stderr", "attention_same")},
                     **{f"{p}_majority_vote_error": 1.0 if alpha_test == 0.3 else 0.5
                        for p in ("train_task", "unseen_task", "ood")},
                     "final_train_loss": 0.01 * (seed + 1), "steps": 60, "status": "finished", **fixed})
  rows.append({**rows[-1], "seed": 2, **{k: None for k in rows[-1] if k.endswith(("error", "same", "stderr"))},
               "final_train_loss": None, "status": "diverged at step 7"})
  return rows


def test_c_plot_sweep_draws_each_varying_evaluation_field_and_training(tmp_path):
  plots.plot_sweep(_rows(), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["error_vs_alpha_test.png", "training.png"]
  for name in os.listdir(tmp_path):
    assert os.path.getsize(tmp_path / name) > 10_000


def test_plot_sweep_splits_panels_by_ood_construction_and_draws_the_hinge_loss(tmp_path):
  rows = [{**row, "ood_construction": construction, **{f"{p}_hinge": 0.5 for p in ("unseen_task", "ood")}}
          for construction in ("training_pairs", "random") for row in _rows()]
  plots.plot_sweep(rows, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["error_vs_alpha_test.png", "training.png"]


def test_format_sweep():
  text = EXPERIMENT.format_sweep(_rows())
  assert text.splitlines()[0].startswith("8/9 rows finished")
  assert "unseen tasks" in text and "out of domain" in text
  assert EXPERIMENT.format_sweep([{"status": "diverged at step 3"}]).startswith("0/1 rows finished")


def test_the_sweep_config_is_valid():
  runs, points = sweeps.validate_sweep_config(EXPERIMENT, classify_sweep.get_config())
  assert len(runs) == 4 and len(points) == 12


@pytest.mark.slow
def test_a_tiny_sweep_writes_its_table_and_figures(tmp_path):
  config = classify_sweep.get_config()
  config.base.update(**_TINY)
  config.alpha_values, config.num_seeds = (0.5,), 2
  config.alpha_test_values, config.s1_values, config.test_prompt_len_values = (0.3, 0.5), (1.0,), (10,)
  rows = sweeps.sweep(EXPERIMENT, config, str(tmp_path))
  assert len(rows) == 4 and all(r["status"] == "finished" for r in rows)
  with open(tmp_path / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert list(table[0]) == ["alpha", "model", "prompt_len", "seed", "alpha_test", "s1", "test_prompt_len",
                            *EXPERIMENT.metrics]
  assert [(r["seed"], r["alpha_test"]) for r in table] == [("0", "0.3"), ("0", "0.5"), ("1", "0.3"), ("1", "0.5")]
  assert sorted(os.listdir(tmp_path / "figures")) == ["error_vs_alpha_test.png", "training.png"]
