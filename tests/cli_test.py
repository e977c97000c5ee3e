"""Every command line, as a new user meets it: bad input is one line on stderr and exit 2, Ctrl-C is one line
and exit 130, configs are found by name from any folder."""

import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (entry point, arguments, what the one line must say). Each fails before anything compiles.
BAD_INPUTS = [
    (["-m", "icl_theory.main"], ["--config.nn=3"], "nn='3' is not allowed: not a field of the config; did you mean 'n'?"),
    (["-m", "icl_theory.main"], ["--config.stesp=10"], "did you mean 'steps'?"),
    (["-m", "icl_theory.main"], ["--config=no_such_config.py"], "config='no_such_config.py' is not allowed: no such file"),
    (["-m", "icl_theory.main"], ["--config.steps=abc"], "steps='abc' is not allowed"),
    (["-m", "icl_theory.main"], ["--config=classify", "--config.alpha=2.0"], "alpha=2.0 is not allowed"),
    (["-m", "icl_theory.main"], ["--config=classify", "--config.alpah=0.5"], "did you mean 'alpha'?"),
    (["-m", "icl_theory.main"], ["--wrokdir=x"], "Unknown command line flag 'wrokdir'"),
    (["-m", "icl_theory.main"], ["stray"], "arguments='stray' are not allowed"),
    (["-m", "icl_theory.main"], ["--config.preconditioner=newton"], "preconditioner='newton' is not allowed"),
    (["-m", "icl_theory.main"], ["--config.response=relu", "--config.antithetic=True"], "antithetic=True is not allowed"),
    (["-m", "icl_theory.sweep"], ["--config.n_values=(0,3)"], "n_values: n=0 is not allowed"),
    (["-m", "icl_theory.sweep"], ["--config.base.stesp=3"], "did you mean 'base.steps'?"),
    (["-m", "icl_theory.sweep"], ["--config=classify_sweep", "--config.s1_values=(0.0,)"], "s1_values: s1=0.0 is not allowed"),
    (["-m", "icl_theory.sweep"], ["--config=nope"], "config='nope' is not allowed"),
    ([os.path.join(REPO, "scripts", "lsa_paper.py")], ["--claim=everything"], "claim='everything' is not allowed"),
    ([os.path.join(REPO, "scripts", "classify_paper.py")], ["--wrong_flag=1"], "Unknown command line flag 'wrong_flag'"),
    ([os.path.join(REPO, "scripts", "benchmark.py")], ["extra"], "arguments='extra' are not allowed"),
    (["-m", "icl_theory.main"], ["--config.parameterization=sparse", "--config.freeze_vanishing_parts=True"],
     "freeze_vanishing_parts=True is not allowed with parameterization='sparse'"),
    ([os.path.join(REPO, "scripts", "lsa_depth.py")], ["--part=everything"], "part='everything' is not allowed"),
]
FAST = {0, 10}  # two of them in the fast subset; the whole table in the full suite


def _run(entry, args, cwd):
  return subprocess.run([sys.executable, *entry, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("index", [pytest.param(i, marks=() if i in FAST else pytest.mark.slow)
                                   for i in range(len(BAD_INPUTS))])
def test_bad_input_is_one_line_and_exit_2(index, tmp_path):
  entry, args, says = BAD_INPUTS[index]
  workdir = tmp_path / "work"
  flags = [f"--workdir={workdir}"] if "icl_theory" in entry[-1] else []
  proc = _run(entry, [*args, *flags], cwd=tmp_path)  # from another folder than the repository's
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr
  assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()  # nothing was written


@pytest.mark.slow
def test_configs_by_name_and_by_repository_path_work_from_any_folder(tmp_path):
  for config in ("classify", "icl_theory/configs/classify.py"):
    proc = _run(["-m", "icl_theory.main"], [f"--config={config}", "--config.steps=0"], cwd=tmp_path)
    # steps=0 is refused by the classification config's own check: the file was found and read.
    assert proc.returncode == 2 and "steps=0 is not allowed" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_ctrl_c_is_one_line_naming_the_checkpoint_and_exit_130(tmp_path):
  workdir = tmp_path / "run"
  # A shell that started us in the background may ignore SIGINT, and a child inherits that: the command
  # re-installs Python's own handler first, as an interactive terminal would have it.
  argv = ["icl_theory.main", f"--workdir={workdir}", "--config.steps=1000000", "--config.checkpoint_every=200",
          "--config.eval_samples=1000"]
  start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           f"sys.argv = {argv!r}; runpy.run_module('icl_theory.main', run_name='__main__')")
  proc = subprocess.Popen([sys.executable, "-c", start], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  checkpoints = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr
  assert "Traceback" not in stderr
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("interrupted: the checkpoint at step ") and "rerun the same command to resume" in last
  step = int(last.split("step ")[1].split()[0])
  assert (checkpoints / str(step)).is_dir()
