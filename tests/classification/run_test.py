"""The classification experiment end to end: a short run learns in context, by attention; the workdir holds up."""

import json
import os
import shutil
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest

import icl_theory
from icl_theory import experiments
from icl_theory.engine import files
from icl_theory.configs import classify
from icl_theory.classification import experiment as classification
from icl_theory.classification.task import OOD_CONSTRUCTIONS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STEPS = 300
# A small run: 10 contexts, half with the query's pattern, so the context's majority says nothing.
_SMALL = dict(prompt_len=10, test_prompt_len=10, batch_size=64, steps=_STEPS, learning_rate=0.2, warmup_steps=20,
              log_every=100, checkpoint_every=_STEPS, eval_samples=2048, test_prompt_lens=(10,), test_alphas=(0.3,),
              test_s1s=(1.0,))


def _config(**fields):
  config = classify.get_config()
  config.update(**_SMALL)
  config.update(**fields)
  return config


def _main(*flags: str, workdir) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "icl_theory.main", "--config=icl_theory/configs/classify.py", *flags,
                         f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO, timeout=300)


class Trained(NamedTuple):
  summary: dict
  workdir: str
  stdout: str
  stderr: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
  """The small run, trained as a user would: on the command line."""
  workdir = tmp_path_factory.mktemp("classification")
  as_flag = lambda v: "(" + "".join(f"{x}," for x in v) + ")" if isinstance(v, tuple) else str(v)
  proc = _main(*(f"--config.{k}={as_flag(v)}" for k, v in _SMALL.items()), workdir=workdir)
  assert proc.returncode == 0, proc.stderr
  with open(workdir / "summary.json") as f:
    return Trained(json.load(f), str(workdir), proc.stdout, proc.stderr)


@pytest.mark.slow  # a whole training run and its tables (15 s with a cold compile cache)
def test_short_run_classifies_unseen_tasks_by_attending_to_the_querys_pattern(trained):
  summary = trained.summary
  # alpha = 1/2: every prompt's labels tie, so majority vote is a coin, exactly.
  for prefix in ("train_task", "unseen_task", "ood"):
    assert summary[f"{prefix}_majority_vote_error"] == 0.5
  # Chance is 0.5; the trained model is far below on tasks it never saw.
  assert summary["train_task_error"] < 0.05
  assert summary["unseen_task_error"] < 0.05
  # Most of the attention on the contexts that share the query's pattern (uniform attention: 0.5).
  assert summary["train_task_attention_same"] > 0.9
  assert summary["unseen_task_attention_same"] > 0.75
  assert summary["ood_attention_same"] > 0.5
  # With 3 of 10 contexts on the query's pattern the majority is always wrong; attention still classifies.
  row, = summary["error_by_alpha_test"]
  assert row["alpha_test"] == 0.3 and row["unseen_task_majority_vote_error"] == 1.0
  assert row["unseen_task_error"] < 0.1
  # The large neurons read the label embedding with their output sign (THEORY claim 4).
  assert summary["large_neurons_cos_signed_q"] > 0.5


@pytest.mark.slow  # a whole training run and its tables (15 s with a cold compile cache)
def test_summary_and_outputs(trained):
  workdir, summary = trained.workdir, trained.summary
  for name in ("summary.json", "metrics.jsonl", "classification.png", "config.json", "checkpoints"):
    assert os.path.exists(os.path.join(workdir, name)), name
  for prefix in ("train_task", "unseen_task", "ood"):
    for suffix in ("_error", "_error_stderr", "_majority_vote_error", "_majority_vote_error_stderr",
                   "_attention_same"):
      assert prefix + suffix in summary, prefix + suffix
  for key in ("config", "error_by_test_prompt_len", "error_by_alpha_test", "ood_error_by_s1", "alpha_test_effective",
              "eval_prompts", "final_train_loss", "steps", "wall_seconds", "train_seconds", "eval_seconds",
              "prompts_per_second", "num_train_tasks", "num_unseen_tasks", "num_ood_tasks",
              "large_neurons_cos_mean_idr", "large_neurons_cos_signed_q"):
    assert key in summary, key
  row, = summary["error_by_test_prompt_len"]
  assert row["test_prompt_len"] == 10 and {"unseen_task_error", "ood_error", "ood_error_stderr"} <= set(row)
  assert [(r["ood_construction"], r["s1"], r["alpha_test"]) for r in summary["ood_error_by_s1"]] == [
      (c, 1.0, a) for c in OOD_CONSTRUCTIONS for a in summary["config"]["test_ood_alphas"]]
  for prefix in ("train_task", "unseen_task", "ood", *(f"ood_{c}" for c in OOD_CONSTRUCTIONS)):
    for suffix in ("_hinge", "_hinge_stderr", "_margin", "_margin_stderr"):
      assert prefix + suffix in summary, prefix + suffix
  assert summary["steps"] == _STEPS and summary["num_train_tasks"] == 12 and summary["num_unseen_tasks"] == 18
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == list(range(100, _STEPS + 1, 100))
  # Each error is a mean of eval_prompts halves and ones: its standard error is the binomial one, or below.
  n, p = summary["eval_prompts"], summary["unseen_task_error"]
  assert summary["unseen_task_error_stderr"] <= np.sqrt(p * (1 - p) / (n - 1)) + 1e-12
  assert summary["config"] == files.to_builtin(_config().to_dict())  # the command line read every flag


@pytest.mark.slow  # a whole training run and its tables (15 s with a cold compile cache)
def test_the_command_line_prints_icl_beside_majority_vote(trained):
  assert trained.stdout == experiments.format_summary(trained.summary) + f"\n\nwritten to {trained.workdir}\n"
  assert "unseen tasks" in trained.stdout and "majority" in trained.stdout
  assert "ood error (hinge loss) by s1" in trained.stdout
  assert f"step {_STEPS}/{_STEPS}" in trained.stderr  # the progress lines


@pytest.mark.slow  # a whole training run and its tables (15 s with a cold compile cache)
def test_rerun_with_new_evaluation_fields_reevaluates_without_training(trained, tmp_path):
  workdir = shutil.copytree(trained.workdir, tmp_path / "run")
  again = icl_theory.train(_config(test_alphas=(0.3, 0.7)), str(workdir))
  assert again.summary["resumed_from_step"] == _STEPS  # nothing retrained
  for key in ("final_train_loss", "train_task_error", "unseen_task_error", "ood_error", "unseen_task_attention_same"):
    assert again.summary[key] == trained.summary[key], key
  assert [r["alpha_test"] for r in again.summary["error_by_alpha_test"]] == [0.3, 0.7]


@pytest.mark.slow  # a whole training run and its tables (15 s with a cold compile cache)
def test_workdir_of_another_training_config_is_refused(trained):
  with pytest.raises(icl_theory.ConfigError, match=r"fields alpha differ.*--overwrite"):
    icl_theory.train(_config(alpha=0.8), trained.workdir)


@pytest.mark.parametrize("field, value", [
    ("alpha", 0.0), ("alpha", 2.0), ("alpha", -0.5), ("prompt_len", 0), ("alpha_test", 1.01), ("test_prompt_len", 0),
    ("M1", 1), ("M1", 3), ("M2", 0), ("d_x", 20), ("d_y", 0), ("s1", 0.0), ("s1", -1.0), ("kappa_max", -0.1),
    ("num_ood_patterns", 1), ("num_ood_patterns", 7), ("m", 0), ("m", 7), ("init_scale", 0.0),
    ("test_prompt_lens", ()), ("test_prompt_lens", (10, 0)), ("test_alphas", (0.5, 1.5)), ("test_s1s", (0.0,)),
    ("eval_samples", 1), ("batch_size", 0), ("steps", 0), ("learning_rate", 0.0), ("optimizer", "lbfgs"),
    ("schedule", "step"), ("warmup_steps", 5000), ("seed", -1), ("checkpoint_every", -1),
    ("model", "bert"), ("model", None), ("num_layers", 0), ("num_heads", 0), ("width", 63), ("mlp_ratio", 0),
])
def test_bad_config_names_the_field(field, value):
  with pytest.raises(icl_theory.ConfigError, match=f"^{field}=") as error:
    classification.validate_config(_config(**{field: value}))
  assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("flag, named", [
    ("--config.alpha=2", "alpha=2.0 is not allowed: a fraction in (0, 1]"),
    ("--config.d_x=20", "d_x=20 is not allowed"),
    ("--config.s1=0", "s1=0.0 is not allowed"),
])
def test_bad_input_on_the_command_line_is_one_line_and_exit_2(tmp_path, flag, named):
  proc = _main(flag, workdir=tmp_path)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr
  assert not os.path.exists(tmp_path / "summary.json")



# The GPT-2-style model through the same experiment: 3 layers, 2 heads, a narrow width, Adam.
_GPT_STEPS = 400
_GPT = dict(model="gpt", width=32, optimizer="adam", learning_rate=1e-3, steps=_GPT_STEPS, checkpoint_every=_GPT_STEPS,
            eval_samples=1024, test_alphas=(0.3,), test_s1s=(1.0,))


@pytest.fixture(scope="module")
def trained_gpt(tmp_path_factory) -> Trained:
  workdir = str(tmp_path_factory.mktemp("classification_gpt"))
  result = icl_theory.train(_config(**_GPT), workdir)
  return Trained(result.summary, workdir, "", "")


@pytest.mark.slow  # trains the GPT-2-style model
def test_a_short_gpt_run_classifies_unseen_tasks_better_than_the_majority(trained_gpt):
  summary = trained_gpt.summary
  assert summary["config"]["model"] == "gpt" and summary["steps"] == _GPT_STEPS
  # alpha' = 1/2: majority vote is a coin (0.5); the transformer classifies tasks it never saw.
  assert summary["unseen_task_majority_vote_error"] == 0.5
  assert summary["train_task_error"] < 0.15
  assert summary["unseen_task_error"] < 0.3
  # alpha' = 0.3: the majority is always wrong; the transformer is still mostly right.
  row, = summary["error_by_alpha_test"]
  assert row["unseen_task_majority_vote_error"] == 1.0 and row["unseen_task_error"] < 0.35


@pytest.mark.slow  # trains the GPT-2-style model
def test_gpt_summary_keeps_every_key_and_has_no_neuron_alignment(trained, trained_gpt):
  assert set(trained_gpt.summary) == set(trained.summary)
  assert trained_gpt.summary["large_neurons_cos_mean_idr"] is None
  assert trained_gpt.summary["large_neurons_cos_signed_q"] is None
  text = experiments.format_summary(trained_gpt.summary)
  assert "GPT-2-style transformer (3 layers, 2 heads, width 32" in text and "large neurons" not in text
  assert "softmax attention + MLP (m=64)" in experiments.format_summary(trained.summary)
  assert os.path.exists(os.path.join(trained_gpt.workdir, "classification.png"))


@pytest.mark.slow  # trains the GPT-2-style model
def test_a_workdir_of_the_other_model_is_refused(trained_gpt):
  with pytest.raises(icl_theory.ConfigError, match=r"fields .*model.* differ"):
    icl_theory.train(_config(**{**_GPT, "model": "softmax_mlp"}), trained_gpt.workdir)
