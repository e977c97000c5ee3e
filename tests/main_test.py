"""The command line, run as a user would: a real `python -m icl_theory.main` process."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "icl_theory.main", *args], capture_output=True, text=True,
                        cwd=cwd or REPO, timeout=300)


@pytest.mark.parametrize("flag, named", [
    ("--config.d=0", "d=0 is not allowed"),
    ("--config.cov_x=geometric:ten", "cov_x='geometric:ten' is not allowed"),
    ("--config.cov_x=diag:1,-2,3,4,5", "cov_x='diag:1,-2,3,4,5' is not allowed"),
    ("--config.noise_std=-1.0", "noise_std=-1.0 is not allowed"),
    ("--config.response=sin", "response='sin' is not allowed"),
    ("--config.steps=0", "steps=0 is not allowed"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, flag, named):
  proc = _main(flag, f"--workdir={tmp_path}")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and named in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "summary.json")


@pytest.mark.slow
def test_divergence_exits_nonzero_with_one_line_and_no_traceback(tmp_path):
  proc = _main("--config.learning_rate=1e6", f"--workdir={tmp_path}")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "diverged" in errors[0] and "learning_rate" in errors[0]


@pytest.mark.slow
def test_a_short_run_prints_learned_against_analytic(tmp_path):
  proc = _main("--config.d=2", "--config.n=6", "--config.steps=300", "--config.warmup_steps=10",
               "--config.eval_samples=5000", f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr
  assert "learned" in proc.stdout and "analytic" in proc.stdout and "gamma_rel_error" in proc.stdout
  assert "step 300/300" in proc.stderr  # the progress lines
  with open(tmp_path / "summary.json") as f:
    summary = json.load(f)
  assert summary["config"]["d"] == 2 and summary["steps"] == 300


@pytest.mark.slow
def test_no_workdir_means_a_fresh_folder(tmp_path):
  proc = _main("--config.d=2", "--config.n=4", "--config.steps=20", "--config.warmup_steps=2",
               "--config.eval_samples=1000", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  runs = os.listdir(tmp_path / "runs")
  assert len(runs) == 1 and runs[0].startswith("lsa_regression-")
  assert os.path.exists(tmp_path / "runs" / runs[0] / "summary.json")
