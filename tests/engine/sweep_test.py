"""Sweeps: the grid, one program per shape, 1 vs 4 devices, kill and resume, diverged runs."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import icl_theory
from icl_theory.engine import compiling, sweep as grid
from icl_theory.configs import sweep as sweep_config
from icl_theory.regression.experiment import EXPERIMENT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The 8-run grid, with a short training budget.
# Adam here: one run per device and several vmapped runs on one device differ in the last
# float32 bits, and SGD's dynamics amplify those into visibly different unconverged runs
# (seen: gamma_rel_error 0.35 vs 0.39 after 400 steps), while Adam's stay within 2e-5.
GRID_FLAGS = ["--config.n_values=(4,16)", "--config.cov_x_values=('identity','geometric:10')",
              "--config.num_seeds=2", "--config.base.d=3", "--config.base.steps=400", "--config.base.warmup_steps=20",
              "--config.base.log_every=100", "--config.base.checkpoint_every=100", "--config.base.eval_samples=4000",
              "--config.base.batch_size=256", "--config.base.optimizer=adam", "--config.base.learning_rate=0.01"]


def _config(**changes):
  config = sweep_config.get_config()
  config.update(n_values=(4, 16), cov_x_values=("identity", "geometric:10"), num_seeds=2)
  config.base.update(d=3, steps=400, warmup_steps=20, log_every=100, checkpoint_every=100, eval_samples=4000,
                     batch_size=256)
  for key, value in changes.items():
    target = config.base if key.startswith("base.") else config
    target[key.removeprefix("base.")] = value
  return config


def _sweep_command(workdir):
  return [sys.executable, "-m", "icl_theory.sweep", *GRID_FLAGS, f"--workdir={workdir}"]


def _csv(path):
  with open(path) as f:
    return f.read()


def _assert_same_table(path_a, path_b):
  """Same rows, coordinates and statuses; numbers equal to float32 rounding.

  One run per device and four vmapped runs on one device are vectorised
  differently by XLA, so the last float32 bits may differ (seen: ~1e-6 relative).
  """
  a, b = list(csv.DictReader(open(path_a))), list(csv.DictReader(open(path_b)))
  assert len(a) == len(b)
  for row_a, row_b in zip(a, b):
    for key in grid.coordinate_fields(EXPERIMENT, _config()) + ("status", "steps"):
      assert row_a[key] == row_b[key], key
    for key in EXPERIMENT.metrics:
      if key in ("status", "steps") or row_a[key] == row_b[key] == "":  # "": not defined for the run (a pool's)
        continue
      # atol: differences of O(1) risks (excess_risk) carry absolute float32 error, 16 ulp of 1.
      np.testing.assert_allclose(float(row_a[key]), float(row_b[key]), rtol=2e-5, atol=16 * 2**-23, err_msg=key)


def test_expand_grid_is_every_combination_in_order():
  config = _config()
  runs = grid.expand_grid(EXPERIMENT, config)
  assert len(runs) == 8
  assert [(r.config(config.base).n, r.config(config.base).cov_x, r.seed) for r in runs[:3]] == [
      (4, "identity", 0), (4, "identity", 1), (4, "geometric:10", 0)]
  plan = grid.plan(EXPERIMENT, config)
  assert {plan.names[plan.group_of[r]] for r in runs} == {"n4-linear", "n16-linear"}


@pytest.mark.parametrize("field, value, named", [
    ("n_values", (4, 0), "n_values: n=0"),
    ("cov_x_values", ("identity", "geometric:0.1"), "cov_x_values: cov_x='geometric:0.1'"),
    ("response_values", ("relu", "sin"), "response_values: response='sin'"),
    ("n_values", (), "n_values=() is not allowed"),
    ("num_seeds", 0, "num_seeds=0"),
    ("base.learning_rate", -1.0, "base.learning_rate: learning_rate=-1.0"),
    ("cov_x_values", ("identity", "identity"), "distinct"),
])
def test_bad_grid_is_refused_before_training(tmp_path, field, value, named):
  with pytest.raises(icl_theory.ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
    icl_theory.run_sweep(_config(**{field: value}), str(tmp_path))
  assert not os.path.exists(tmp_path / "groups")


@pytest.mark.slow
def test_sweep_table_figures_and_rows_match_single_runs(tmp_path):
  rows = icl_theory.run_sweep(_config(), str(tmp_path))
  table = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert len(table) == len(rows) == 8
  for column in ("n", "cov_x", "cov_w", "noise_std", "response", "num_layers", "seed", "gamma_rel_error",
                 "learned_risk", "model_risk_mc", "optimal_risk", "one_step_gd_risk", "preconditioned_gd_risk",
                 "ridge_risk", "ols_risk", "final_train_loss", "steps", "status"):
    assert column in table[0], column
  assert all(row["status"] == "finished" for row in table)
  for name in ("risk_vs_n.png", "gamma_spectrum.png", "gamma_rel_error.png"):
    assert os.path.getsize(tmp_path / "figures" / name) > 10_000
  # A row of the vmapped group equals the same run trained alone (within float tolerance).
  run = grid.expand_grid(EXPERIMENT, _config())[3]  # n=4, geometric:10, seed 1
  alone = icl_theory.train(run.config(_config().base), str(tmp_path / "alone")).summary
  for key in ("learned_risk", "model_risk_mc", "ridge_risk", "ols_risk"):
    np.testing.assert_allclose(rows[3][key], alone[key], rtol=2e-4, err_msg=key)
  # Same draws, but float sums in another order (vmapped reductions), and Adam divides the
  # near-zero gradients of this ill-conditioned, unconverged run by their own size: rounding
  # alone moved Gamma by 0.14% of its norm (gamma_rel_error by 0.34%) when only the loss's
  # summation order changed; the other seed's run sits 4.5% away (8%). Between the two:
  learned, single = np.asarray(rows[3]["effective_gamma"]), np.asarray(alone["effective_gamma"])
  assert np.linalg.norm(learned - single) < 1e-2 * np.linalg.norm(single)
  np.testing.assert_allclose(rows[3]["gamma_rel_error"], alone["gamma_rel_error"], rtol=1e-2)
  other_seed = np.asarray(rows[2]["effective_gamma"])
  assert np.linalg.norm(other_seed - single) > 2e-2 * np.linalg.norm(single)


@pytest.mark.slow
def test_one_and_four_devices_and_kill_resume_give_the_same_table(tmp_path):
  # CPU devices (also where a GPU is installed): one, or four forced host devices.
  cpu = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env = {**cpu, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  one = subprocess.run(_sweep_command(tmp_path / "one"), cwd=REPO, capture_output=True, text=True, env=cpu)
  assert one.returncode == 0, one.stderr
  four = subprocess.run(_sweep_command(tmp_path / "four"), cwd=REPO, capture_output=True, text=True, env=env)
  assert four.returncode == 0, four.stderr
  assert "(4 device(s))" in four.stderr
  _assert_same_table(tmp_path / "four" / "results.csv", tmp_path / "one" / "results.csv")

  # Killed (SIGKILL) in the middle of the second group, after one of its checkpoints; then resumed.
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_sweep_command(killed), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=cpu)
  mark = killed / "groups" / "n16-linear" / "checkpoints" / "200"
  deadline = time.time() + 240
  while not mark.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the sweep ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "results.csv").exists()
  resumed = subprocess.run(_sweep_command(killed), cwd=REPO, capture_output=True, text=True, env=cpu)
  assert resumed.returncode == 0, resumed.stderr
  assert "Resumed from the checkpoint at step" in resumed.stderr
  assert _csv(killed / "results.csv") == _csv(tmp_path / "one" / "results.csv")


@pytest.mark.slow
def test_rerun_skips_finished_groups_and_other_configs_are_refused(tmp_path, monkeypatch):
  config = _config(n_values=(4,), cov_x_values=("identity",), num_seeds=1)
  compile_lowered, scopes = compiling.compile_lowered, []

  def spied(*args, **kwargs):  # which options a sweep's programs compile under
    scopes.append(compiling.scoped_options())
    return compile_lowered(*args, **kwargs)

  monkeypatch.setattr(compiling, "compile_lowered", spied)
  first = icl_theory.run_sweep(config, str(tmp_path))
  # Training (init and chunk) and evaluation (reference and compare) generate their code on one thread.
  assert len(scopes) >= 4 and all(scope == compiling.SERIAL_CODEGEN for scope in scopes)
  assert compiling.scoped_options() == {}  # and only while the sweep runs
  table = _csv(tmp_path / "results.csv")
  group = tmp_path / "groups" / "n4-linear"
  written = {p: os.stat(p).st_mtime_ns for p in [group / "rows.json", group / "metrics.jsonl"]}
  again = icl_theory.run_sweep(config, str(tmp_path))
  # Nothing retrained: the group's rows are read back and its files are left as they were.
  assert {p: os.stat(p).st_mtime_ns for p in written} == written
  assert _csv(tmp_path / "results.csv") == table and again[0]["gamma_rel_error"] == first[0]["gamma_rel_error"]
  with pytest.raises(icl_theory.ConfigError, match="different config.*--overwrite"):
    icl_theory.run_sweep(_config(n_values=(5,), cov_x_values=("identity",), num_seeds=1), str(tmp_path))


@pytest.mark.slow
def test_a_diverged_run_is_marked_and_the_others_finish(tmp_path):
  # SGD at a fixed rate, unclipped: stable for unit covariates, unstable for covariates 30 times larger.
  config = _config(n_values=(4,), cov_x_values=("identity", "diag:30,30,30"), num_seeds=1,
                   **{"base.optimizer": "sgd", "base.learning_rate": 0.01, "base.schedule": "constant",
                      "base.clip_norm": 0.0})
  rows = icl_theory.run_sweep(config, str(tmp_path))
  assert rows[0]["status"] == "finished" and rows[0]["gamma_rel_error"] < 0.5
  assert rows[1]["status"].startswith("diverged at step") and rows[1]["gamma_rel_error"] is None
  table = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert table[1]["status"].startswith("diverged") and table[1]["gamma_rel_error"] == ""
