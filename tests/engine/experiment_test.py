"""The engine on an experiment of its own: a toy defined here, trained, swept, resumed and re-evaluated.

The toy learns one scalar w minimising E[(w x - a x)^2], x ~ N(0, 1): its optimum
is w = a. The task is {"a": a}, an array field, so runs differing in a (and the
seed) share one program; the learning rate makes groups. Its evaluation field
`test_std` (an evaluation axis) scales the test inputs: risk = (w - a)^2 test_std^2.
Nothing here knows the LSA: the engine must work from the `Experiment` protocol alone.
"""

import ast
import csv
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from icl_theory.engine import files, run as runs, sweep as sweeps, trainer, workdir as workdirs
from icl_theory.engine.experiment import Experiment
from icl_theory.engine.validation import ConfigError, check_float, check_int

ENGINE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "icl_theory", "engine")
A_VALUES, LR_VALUES, STD_VALUES = (1.0, -2.0), (0.1, 0.05), (1.0, 3.0)


class ScalarRegression(Experiment):
  name = "toy_scalar"
  run_figure = "toy.png"
  evaluation_fields = ("test_std", "eval_samples")
  training_axes = {"a_values": "a", "learning_rate_values": "learning_rate"}
  evaluation_axes = {"test_std_values": "test_std"}
  array_fields = ("a",)
  metrics = ("w", "error", "risk", "risk_mc", "final_train_loss", "steps", "status")

  def validate(self, config):
    check_float("a", config.a)
    check_float("test_std", config.test_std, minimum=0.0, strict=True)
    check_int("seed", config.seed, 0)
    trainer.validate_training_fields(config)
    return self.build_task(config)

  def build_task(self, config):
    return {"a": np.asarray(config.a, np.float32)}

  def objective(self, task, config, num_runs):
    batch_size = config.batch_size

    def init(key):
      return {"w": 0.1 * jax.random.normal(key, ())}

    def loss(params, key, task):
      x = jax.random.normal(key, (batch_size,))
      return jnp.mean((params["w"] * x - task["a"] * x) ** 2)

    return trainer.Objective(init=init, loss=loss, batch_size=batch_size)

  def evaluate(self, params, tasks, configs, keys, compiled=None):
    w, a = np.asarray(params["w"]), np.asarray(tasks["a"])
    out = []
    for r, config in enumerate(configs):
      x = config.test_std * jax.random.normal(jnp.asarray(keys[r]), (config.eval_samples,))
      out.append({"w": float(w[r]), "error": float(abs(w[r] - a[r])),
                  "risk": float((w[r] - a[r]) ** 2 * config.test_std**2),
                  "risk_mc": float(jnp.mean(((w[r] - a[r]) * x) ** 2))})
    return out

  def format_summary(self, summary):
    return f"w {summary['w']:.4f} (error {summary['error']:.2e})"


TOY = ScalarRegression()


def _config(**fields):
  config = ml_collections.ConfigDict(dict(
      experiment="toy_scalar", a=1.0, test_std=1.0, eval_samples=1000, optimizer="sgd", learning_rate=0.1,
      clip_norm=0.0, schedule="constant", warmup_steps=0, batch_size=64, steps=100, seed=0, log_every=25,
      checkpoint_every=50, keep_checkpoints=3))
  config.update(fields)
  return config


def _sweep_config(**fields):
  config = ml_collections.ConfigDict(dict(base=_config(), a_values=A_VALUES, learning_rate_values=LR_VALUES,
                                          num_seeds=2, test_std_values=STD_VALUES))
  config.update(fields)
  return config


def _lookup(name):
  assert name == "toy_scalar", name
  return TOY


def _mtimes(folder):
  return {os.path.relpath(os.path.join(root, name), folder): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(folder) for name in names}


def test_a_single_run_trains_writes_its_workdir_resumes_and_loads(tmp_path):
  result = runs.train(TOY, _config(), str(tmp_path))
  summary = result.summary
  assert summary["status"] == "finished" and summary["steps"] == 100 and summary["resumed_from_step"] == 0
  assert summary["error"] < 1e-3 and summary["error"] == abs(summary["w"] - 1.0)
  assert summary["risk"] == pytest.approx(summary["error"] ** 2)
  assert summary["risk_mc"] == pytest.approx(summary["risk"], rel=0.2)
  assert float(result.params["w"]) == summary["w"] and result.task["a"] == 1.0
  assert [row["step"] for row in result.history] == [25, 50, 75, 100]
  for name in ("summary.json", "metrics.jsonl", "config.json", "checkpoints", workdirs.PARAMS_FILE, ".lock"):
    assert os.path.exists(tmp_path / name), name
  assert files.read_json(str(tmp_path / "summary.json"))["w"] == summary["w"]

  # Rerun: resumes from the last checkpoint, trains nothing, the same numbers.
  again = runs.train(TOY, _config(), str(tmp_path)).summary
  assert again["resumed_from_step"] == 100
  assert {k: again[k] for k in TOY.metrics} == {k: summary[k] for k in TOY.metrics}
  # An evaluation field may change in the same workdir; a training field may not.
  wider = runs.train(TOY, _config(test_std=2.0), str(tmp_path)).summary
  assert wider["w"] == summary["w"] and wider["risk"] == pytest.approx(4 * summary["risk"])
  with pytest.raises(ConfigError, match="fields a differ"):
    runs.train(TOY, _config(a=2.0), str(tmp_path))

  loaded = runs.load_run(str(tmp_path), _lookup)
  assert float(loaded.params["w"]) == summary["w"] and loaded.config.a == 1.0 and loaded.task["a"] == 1.0
  assert loaded.summary["w"] == summary["w"]


def test_a_bad_field_is_refused_before_anything_is_written(tmp_path):
  with pytest.raises(ConfigError, match="^test_std=0.0 is not allowed"):
    runs.train(TOY, _config(test_std=0.0), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  with pytest.raises(ConfigError, match=r"^test_std_values: test_std=-1.0 is not allowed"):
    sweeps.sweep(TOY, _sweep_config(test_std_values=(1.0, -1.0)), str(tmp_path / "sweep"))
  with pytest.raises(ConfigError, match=r"^base.steps: steps=0 is not allowed"):
    sweeps.sweep(TOY, _sweep_config(base=_config(steps=0)), str(tmp_path / "sweep"))
  assert not os.path.exists(tmp_path / "sweep")


def _expected_coordinates():
  return [{"a": a, "learning_rate": lr, "seed": seed, "test_std": std}
          for a in A_VALUES for lr in LR_VALUES for seed in (0, 1) for std in STD_VALUES]


def test_a_sweep_rows_groups_and_table(tmp_path):
  config = _sweep_config()
  rows = sweeps.sweep(TOY, config, str(tmp_path))
  # Runs (2 values of a x 2 learning rates x 2 seeds) x evaluation points, run-major, in the grid's order.
  assert len(sweeps.expand_grid(TOY, config)) == 8 and len(rows) == 8 * 2
  assert [{k: row[k] for k in ("a", "learning_rate", "seed", "test_std")} for row in rows] == _expected_coordinates()
  assert all(row["status"] == "finished" and row["steps"] == 100 for row in rows)
  for row in rows:
    assert row["error"] == abs(row["w"] - row["a"]) and row["error"] < 1e-2
    assert row["risk"] == pytest.approx(row["error"] ** 2 * row["test_std"] ** 2)
  for first, second in zip(rows[::2], rows[1::2]):  # one run at its two evaluation points
    assert first["w"] == second["w"] and first["final_train_loss"] == second["final_train_loss"]
  assert rows[0]["w"] != rows[2]["w"]  # the seed matters

  # Groups by the learning rate (a program field); a is an array field, shared.
  assert sorted(os.listdir(tmp_path / "groups")) == ["learning_rate0.05", "learning_rate0.1"]
  held = files.read_json(str(tmp_path / "groups" / "learning_rate0.1" / sweeps.ROWS_FILE))
  assert set(held) == {"eval_points", "training", "rows"}
  assert held["eval_points"] == [{"test_std": std} for std in STD_VALUES] and len(held["training"]) == 4
  assert held["rows"] == files.to_builtin([r for r in rows if r["learning_rate"] == 0.1])
  group_params = workdirs.load_params(str(tmp_path / "groups" / "learning_rate0.1" / workdirs.PARAMS_FILE))
  assert group_params["w"].shape == (4,)

  with open(tmp_path / "results.csv") as f:
    table = list(csv.reader(f))
  assert table[0] == ["a", "learning_rate", "seed", "test_std", *TOY.metrics]
  assert len(table) == 1 + 16 and float(table[1][table[0].index("w")]) == pytest.approx(rows[0]["w"], rel=1e-6)

  # A sweep's run is the run trained alone (a group of one), up to vmapped float sums.
  alone = runs.train(TOY, sweeps.expand_grid(TOY, config)[5].config(config.base), str(tmp_path / "alone")).summary
  assert (alone["config"]["a"], alone["config"]["learning_rate"], alone["config"]["seed"]) == (-2.0, 0.1, 1)
  assert alone["w"] == pytest.approx(rows[10]["w"], rel=1e-6, abs=1e-7)

  # A sweep's run reads back by index and by coordinates.
  loaded = runs.load_run(str(tmp_path), _lookup, run={"a": -2.0, "learning_rate": 0.1, "seed": 1})
  assert loaded.summary == files.to_builtin(rows[10:12])  # its rows at both evaluation points
  assert float(loaded.params["w"]) == rows[10]["w"]
  assert runs.load_run(str(tmp_path), _lookup, run=5).summary == loaded.summary


def test_a_killed_sweep_resumes_and_ends_with_the_same_table(tmp_path, caplog):
  rows = sweeps.sweep(TOY, _sweep_config(), str(tmp_path))
  table = open(tmp_path / "results.csv").read()
  killed, kept = tmp_path / "groups" / "learning_rate0.05", tmp_path / "groups" / "learning_rate0.1"
  # As if killed after its checkpoint at step 50: no rows, no parameters, no later checkpoint.
  for path in (killed / sweeps.ROWS_FILE, killed / workdirs.PARAMS_FILE, tmp_path / "results.csv"):
    os.remove(path)
  shutil.rmtree(killed / "checkpoints" / "100")
  assert sorted(os.listdir(killed / "checkpoints")) == ["50"]
  untouched = _mtimes(kept)
  caplog.set_level(logging.INFO)
  again = sweeps.sweep(TOY, _sweep_config(), str(tmp_path))
  assert "Resumed from the checkpoint at step 50" in caplog.text
  assert again == rows  # resuming is bit-exact
  assert open(tmp_path / "results.csv").read() == table
  assert _mtimes(kept) == untouched  # the finished group was neither retrained nor rewritten
  assert sorted(os.listdir(killed / "checkpoints")) == ["100", "50"]
  assert [row["step"] for row in files.read_jsonl(str(killed / "metrics.jsonl"))] == [25, 50, 75, 100]


def test_a_new_evaluation_axis_re_evaluates_without_retraining(tmp_path):
  rows = sweeps.sweep(TOY, _sweep_config(), str(tmp_path))
  trained = {name: _mtimes(tmp_path / "groups" / name / "checkpoints") for name in os.listdir(tmp_path / "groups")}
  params = {name: os.stat(tmp_path / "groups" / name / workdirs.PARAMS_FILE).st_mtime_ns for name in trained}
  wider = sweeps.sweep(TOY, _sweep_config(test_std_values=(2.0,)), str(tmp_path))
  assert len(wider) == 8
  assert {name: os.stat(tmp_path / "groups" / name / workdirs.PARAMS_FILE).st_mtime_ns for name in trained} == params
  assert {name: _mtimes(tmp_path / "groups" / name / "checkpoints") for name in trained} == trained
  for new, old in zip(wider, rows[::2]):
    assert new["test_std"] == 2.0 and new["w"] == old["w"] and new["final_train_loss"] == old["final_train_loss"]
    assert new["risk"] == pytest.approx(4 * old["risk"])
  held = files.read_json(str(tmp_path / "groups" / "learning_rate0.1" / sweeps.ROWS_FILE))
  assert held["eval_points"] == [{"test_std": 2.0}]
  with open(tmp_path / "results.csv") as f:
    assert len(list(csv.reader(f))) == 1 + 8
  # A training field may not change in the same workdir.
  with pytest.raises(ConfigError, match="different config"):
    sweeps.sweep(TOY, _sweep_config(a_values=(1.0, 3.0)), str(tmp_path))


def _imported_modules(path):
  """The absolute names of the modules a file imports (relative imports resolved within icl_theory.engine)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      package = "icl_theory.engine".split(".")
      base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
      module = ".".join(part for part in (base, node.module or "") if part)
      names += [module] + [f"{module}.{alias.name}" for alias in node.names]
  return names


def test_the_engine_imports_no_experiment():
  paths = [os.path.join(ENGINE, name) for name in sorted(os.listdir(ENGINE)) if name.endswith(".py")]
  assert {"run.py", "sweep.py", "group.py", "experiment.py", "trainer.py"} <= {os.path.basename(p) for p in paths}
  forbidden = ("icl_theory.regression", "icl_theory.classification", "icl_theory.experiments")
  for path in paths:
    for module in _imported_modules(path):
      assert not any(module == f or module.startswith(f + ".") for f in forbidden), (path, module)
