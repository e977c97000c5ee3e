"""The persistent compilation cache: a repeated command of the same shapes compiles nothing new."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config.d=3", "--config.n=6", "--config.steps=40", "--config.warmup_steps=10", "--config.log_every=20",
        "--config.checkpoint_every=0", "--config.eval_samples=2000"]


CLASSIFY_ARGS = ["--config=classify", "--config.steps=20", "--config.warmup_steps=5", "--config.log_every=10",
                 "--config.checkpoint_every=0", "--config.eval_samples=512", "--config.test_prompt_lens=(2,20)",
                 "--config.test_alphas=(0.5,)", "--config.test_s1s=(1.0,)", "--config.test_ood_alphas=(0.5,)"]


def _run(cache: str, workdir: str, args=ARGS) -> str:
  """Runs the command; returns its stderr, with JAX's log line for every program it compiled or loaded."""
  env = {**os.environ, "ICL_THEORY_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1"}
  done = subprocess.run([sys.executable, "-m", "icl_theory.main", *args, f"--workdir={workdir}"], cwd=REPO,
                        env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stderr


@pytest.mark.slow  # two whole commands of each experiment, about 25 s
@pytest.mark.parametrize("args", [ARGS, CLASSIFY_ARGS], ids=["lsa", "classify"])
def test_a_repeated_command_loads_every_program_from_the_cache(tmp_path, args):
  cache = str(tmp_path / "cache")
  _run(cache, str(tmp_path / "first"), args)
  # Every program the first run compiled is kept (MIN_COMPILE_SECONDS = 0), so a rerun that
  # compiled anything with the cache on would add an entry ...
  first = set(os.listdir(cache))
  assert len(first) >= 5
  log = _run(cache, str(tmp_path / "second"), args)
  assert set(os.listdir(cache)) == first
  # ... and one that compiled before turning the cache on (the classifier's validation draws its
  # patterns) would log a compilation that is not a cache hit.
  compiled = log.count("Finished XLA compilation of")
  assert compiled >= 5
  assert log.count("Persistent compilation cache hit") == compiled, log[-3000:]


@pytest.mark.slow
def test_off_keeps_no_cache(tmp_path):
  home = tmp_path / "home"
  env_cache = str(home / ".cache")
  env = {**os.environ, "ICL_THEORY_CACHE_DIR": "off", "XDG_CACHE_HOME": env_cache, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-m", "icl_theory.main", *ARGS, f"--workdir={tmp_path / 'run'}"],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert not os.path.exists(os.path.join(env_cache, "icl_theory"))
