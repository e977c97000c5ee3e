"""The README's Python example runs as written, and its two set-up commands are what CI runs."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


@pytest.mark.slow
def test_python_example_runs(tmp_path, monkeypatch):
  blocks = re.findall(r"```python\n(.*?)```", _readme(), flags=re.S)
  assert blocks, "the README has a Python example"
  monkeypatch.chdir(tmp_path)  # the example writes runs/...
  for block in blocks:
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
  assert os.path.exists(tmp_path / "runs" / "readme-example" / "summary.json")


def test_ci_runs_the_readme_test_command():
  commands = re.findall(r"```bash\n(.*?)```", _readme(), flags=re.S)[0].strip().splitlines()
  assert len(commands) == 2, "the README opens with exactly two set-up commands"
  test_command = commands[1].split("#")[0].strip()
  with open(os.path.join(REPO, ".ci", "run")) as f:
    assert test_command in f.read()
