"""The persistent compilation cache: a repeated command of the same shapes compiles nothing new."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config.d=3", "--config.n=6", "--config.steps=40", "--config.warmup_steps=10", "--config.log_every=20",
        "--config.checkpoint_every=0", "--config.eval_samples=2000"]


def _run(cache: str, workdir: str) -> None:
  env = {**os.environ, "ICL_THEORY_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-m", "icl_theory.main", *ARGS, f"--workdir={workdir}"], cwd=REPO,
                        env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # two whole commands, about 10 s
def test_a_repeated_command_loads_every_program_from_the_cache(tmp_path):
  cache = str(tmp_path / "cache")
  _run(cache, str(tmp_path / "first"))
  # Every program the first run compiled is kept (MIN_COMPILE_SECONDS = 0), so a rerun that
  # compiled anything would add an entry.
  first = set(os.listdir(cache))
  assert len(first) >= 5
  _run(cache, str(tmp_path / "second"))
  assert set(os.listdir(cache)) == first


@pytest.mark.slow
def test_off_keeps_no_cache(tmp_path):
  home = tmp_path / "home"
  env_cache = str(home / ".cache")
  env = {**os.environ, "ICL_THEORY_CACHE_DIR": "off", "XDG_CACHE_HOME": env_cache, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-m", "icl_theory.main", *ARGS, f"--workdir={tmp_path / 'run'}"],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert not os.path.exists(os.path.join(env_cache, "icl_theory"))
