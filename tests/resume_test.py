"""Nothing is lost: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config.d=3", "--config.n=10", "--config.steps=1200", "--config.log_every=100",
        "--config.checkpoint_every=200", "--config.eval_samples=20000"]
# Bookkeeping that legitimately differs between a resumed run and an uninterrupted one.
TIMINGS = {"wall_seconds", "compile_seconds", "train_seconds", "eval_seconds", "prompts_per_second",
           "resumed_from_step"}


def _command(workdir):
  return [sys.executable, "-m", "icl_theory.main", *ARGS, f"--workdir={workdir}"]


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return {k: v for k, v in json.load(f).items() if k not in TIMINGS}


def _final_params(workdir):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(os.path.abspath(workdir), "checkpoints", "1200", "default"))


def _kill_after_checkpoint(workdir, step):
  proc = subprocess.Popen(_command(workdir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  target = os.path.join(workdir, "checkpoints", str(step))
  while not os.path.isdir(target) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed: make it longer"
  proc.send_signal(signal.SIGKILL)
  proc.wait()


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
  kill_after = 600
  full, killed = tmp_path / "full", tmp_path / "killed"
  subprocess.run(_command(full), cwd=REPO, check=True, capture_output=True)
  _kill_after_checkpoint(str(killed), kill_after)
  assert not os.path.exists(killed / "summary.json")
  resumed = subprocess.run(_command(killed), cwd=REPO, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr
  assert "Resumed from the checkpoint at step" in resumed.stderr
  with open(killed / "summary.json") as f:
    assert json.load(f)["resumed_from_step"] >= kill_after
  assert _summary(killed) == _summary(full)
  a, b = _final_params(full), _final_params(killed)
  for part in ("params", "opt_state"):
    flat_a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a["state"][part])])
    flat_b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b["state"][part])])
    np.testing.assert_array_equal(flat_a, flat_b)
  # metrics.jsonl has each logging point once, in order, as in the uninterrupted run.
  steps = lambda w: [json.loads(line)["step"] for line in open(w / "metrics.jsonl")]
  assert steps(killed) == steps(full) == list(range(100, 1201, 100))
