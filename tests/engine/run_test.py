"""Single runs: a run is a sweep of one; `load_run` reads runs back without writing; one process per workdir."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import icl_theory
from icl_theory.configs import lsa as lsa_config
from icl_theory.configs import sweep as sweep_config
from icl_theory.engine import files, group, sweep as sweeps, workdir as workdirs
from icl_theory.regression.experiment import EXPERIMENT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(d=3, n=6, steps=200, warmup_steps=10, batch_size=256, log_every=100, checkpoint_every=100,
            eval_samples=2000, gamma_mc_samples=2000)


def _config(**fields):
  config = lsa_config.get_config()
  config.update(**{**TINY, **fields})
  return config


def _sweep_config(base, **axes):
  """A sweep of `base`: every axis one value (base's own) unless given in `axes`."""
  config = sweep_config.get_config()
  config.base = base
  for sweep_field, run_field in EXPERIMENT.training_axes.items():
    config[sweep_field] = axes.pop(sweep_field, (base[run_field],))
  config.num_seeds = axes.pop("num_seeds", 1)
  assert not axes, axes
  return config


def _hashes(folder):
  """Every file under `folder` -> the sha256 of its bytes; every folder -> None."""
  seen = {}
  for root, dirs, names in os.walk(folder):
    for name in dirs:
      seen[os.path.relpath(os.path.join(root, name), folder)] = None
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        seen[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
  return seen


@pytest.mark.slow
def test_a_run_and_a_sweep_of_that_one_run_give_identical_numbers(tmp_path):
  config = _config(noise_std=0.3, cov_x="geometric:4@0")
  alone = icl_theory.train(config, str(tmp_path / "run")).summary
  (row,) = icl_theory.run_sweep(_sweep_config(config), str(tmp_path / "sweep"))
  assert row["status"] == alone["status"] == "finished" and row["steps"] == alone["steps"] == 200
  for key in ("gamma_rel_error", "learned_risk", "model_risk_mc", "ridge_risk", "final_train_loss"):
    assert row[key] == alone[key], (key, row[key], alone[key])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  """A single run trained by the command line, as a user would."""
  workdir = tmp_path_factory.mktemp("cli") / "run"
  flags = [f"--config.{k}={v}" for k, v in TINY.items()]
  proc = subprocess.run([sys.executable, "-m", "icl_theory.main", *flags, f"--workdir={workdir}"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_load_run_of_a_command_line_run_reads_it_back_and_writes_nothing(cli_run):
  workdir = cli_run
  before = _hashes(workdir)
  assert workdirs.PARAMS_FILE in before and "summary.json" in before

  loaded = icl_theory.load_run(str(workdir))
  summary = loaded.summary
  assert loaded.workdir == str(workdir)
  assert loaded.config.to_dict() == files.read_json(str(workdir / "config.json"))
  assert (loaded.task.d, loaded.task.n) == (3, 6)
  assert [row["step"] for row in loaded.history] == [100, 200]
  assert all(isinstance(row["loss"], float) for row in loaded.history)  # a single run's loss: a number
  # The parameters are the run's: compare takes them, and on the run's own evaluation key and
  # sample count it gives the summary's numbers (the same computation, compiled alone).
  np.testing.assert_allclose(icl_theory.effective_gamma(loaded.params), np.asarray(summary["effective_gamma"]),
                             rtol=1e-6, atol=1e-7)
  report = icl_theory.compare(loaded.params, loaded.task, key=group.eval_key(loaded.config.seed),
                              num_samples=loaded.config.eval_samples)
  for key in ("effective_gamma", "gamma_rel_error", "learned_risk", "model_risk_mc", "prediction_gap_mse"):
    assert report[key] == summary[key], (key, report[key], summary[key])
  # Reading wrote nothing: the same names and the same bytes.
  assert _hashes(workdir) == before


def _small_sweep_config():
  """Two groups (n=4, n=6) of two runs each (seeds 0, 1): 4 runs."""
  return _sweep_config(_config(steps=100, log_every=50, checkpoint_every=50), n_values=(4, 6), num_seeds=2)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sweep")
  rows = icl_theory.run_sweep(_small_sweep_config(), str(workdir))
  return workdir, rows


@pytest.fixture
def planned_sweep(tmp_path):
  """The folder of that sweep as it is before any group is trained: its sweep_config.json alone."""
  files.write_json(str(tmp_path / sweeps.SWEEP_CONFIG_FILE), _small_sweep_config().to_dict())
  return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("index, coordinates", [(0, {"n": 4, "seed": 0}), (1, {"n": 4, "seed": 1}),
                                                (2, {"n": 6, "seed": 0}), (3, {"seed": 1, "n": 6})])
def test_load_run_of_a_sweep_by_index_and_by_coordinates(small_sweep, index, coordinates):
  workdir, rows = small_sweep
  before = _hashes(workdir)
  by_index = icl_theory.load_run(str(workdir), run=index)
  by_coordinates = icl_theory.load_run(str(workdir), run=coordinates)
  assert _hashes(workdir) == before
  for loaded in (by_index, by_coordinates):
    assert (loaded.config.n, loaded.config.seed) == (coordinates["n"], coordinates["seed"])
    assert loaded.task.n == coordinates["n"]
    assert loaded.summary == files.to_builtin(rows[index])  # that run's row, as run_sweep returned it
    # Its parameters: those the row was evaluated on.
    np.testing.assert_array_equal(np.asarray(icl_theory.effective_gamma(loaded.params), np.float32),
                                  np.asarray(rows[index]["effective_gamma"], np.float32))
    assert [row["step"] for row in loaded.history] == [50, 100]
    assert loaded.history[-1]["loss"] == rows[index]["final_train_loss"]
  np.testing.assert_array_equal(np.concatenate([np.ravel(x) for x in _leaves(by_index.params)]),
                                np.concatenate([np.ravel(x) for x in _leaves(by_coordinates.params)]))
  # The group's params.msgpack holds the group's runs along a leading axis: this run's slice.
  name = f"n{coordinates['n']}-linear"
  stacked = workdirs.load_params(str(workdir / "groups" / name / workdirs.PARAMS_FILE))
  for got, held in zip(_leaves(by_index.params), _leaves(stacked)):
    np.testing.assert_array_equal(got, held[coordinates["seed"]])


def _leaves(tree):
  return jax.tree.leaves(tree)


@pytest.mark.parametrize("run, message", [
    (None, "run=None is not allowed: for a sweep, an index 0..3"),
    (4, "run=4 is not allowed: an index 0..3"),
    (-1, "run=-1 is not allowed"),
    (True, "run=True is not allowed"),
    ("0", "run='0' is not allowed"),
    ({"n": 4}, "matches 2 runs of the sweep, not one"),
    ({"n": 5, "seed": 0}, "matches 0 runs"),
    ({"d": 3, "seed": 0}, "matches 0 runs"),
])
def test_load_run_of_a_sweep_refuses_a_bad_run(planned_sweep, run, message):
  before = _hashes(planned_sweep)
  with pytest.raises(icl_theory.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    icl_theory.load_run(str(planned_sweep), run=run)
  assert _hashes(planned_sweep) == before


def test_load_run_of_an_untrained_sweep_run_is_refused(planned_sweep):
  with pytest.raises(icl_theory.ConfigError, match=r"run=\{'n': 6, 'seed': 1\} is not trained yet .*n6-linear"):
    icl_theory.load_run(str(planned_sweep), run={"n": 6, "seed": 1})
  assert os.listdir(planned_sweep) == [sweeps.SWEEP_CONFIG_FILE]  # nothing was written


def test_load_run_refuses_a_run_of_a_single_run_and_an_unfinished_workdir(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  for run in (None, 0):
    with pytest.raises(icl_theory.ConfigError, match="holds no run or sweep"):
      icl_theory.load_run(str(empty), run=run)
  assert os.listdir(empty) == []  # nothing was written
  single = tmp_path / "single"  # a single run's workdir, claimed but not finished
  single.mkdir()
  (single / "config.json").write_text(json.dumps(lsa_config.get_config().to_dict()))
  with pytest.raises(icl_theory.ConfigError, match="run=0 is not allowed: .* holds a single run, not a sweep"):
    icl_theory.load_run(str(single), run=0)
  with pytest.raises(icl_theory.ConfigError, match="holds no finished run"):
    icl_theory.load_run(str(single))
  assert os.listdir(single) == ["config.json"]


def _lock_holder(path):
  try:
    with open(path) as f:
      return f.read().strip()
  except FileNotFoundError:
    return ""


@pytest.mark.slow
def test_a_second_command_line_process_on_a_busy_workdir_is_one_line_and_exit_2(tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "icl_theory.main", "--config.d=3", "--config.n=10", "--config.steps=2000",
             "--config.log_every=500", "--config.checkpoint_every=0", "--config.eval_samples=2000",
             f"--workdir={workdir}"]
  first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while not _lock_holder(workdir / workdirs.LOCK_FILE) and first.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    # Paused while the second starts (its lock and its work are untouched; a stopped process still
    # holds the lock): the first is surely still running when the second tries, on a loaded machine too.
    first.send_signal(signal.SIGSTOP)
    assert _lock_holder(workdir / workdirs.LOCK_FILE).startswith(f"process {first.pid} on ")
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.poll() is None
    first.send_signal(signal.SIGCONT)
  except BaseException:
    first.send_signal(signal.SIGCONT)
    first.kill()
    first.communicate()
    raise
  out, err = first.communicate(timeout=300)
  assert second.returncode == 2, second.stderr
  assert "Traceback" not in second.stderr
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1, second.stderr
  assert lines[0].startswith("error: ") and f"workdir={str(workdir)!r} is in use by process {first.pid}" in lines[0]
  assert second.stdout == ""
  assert first.returncode == 0, err[-3000:]
  assert "gamma_rel_error" in out
  assert files.read_json(str(workdir / "summary.json"))["steps"] == 2000
