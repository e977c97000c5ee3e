"""Workdirs: the lock refuses a second process and never outlives its holder; files are group-readable;
parameters round-trip."""

import os
import re
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.engine import files, workdir
from icl_theory.engine.validation import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A child that takes the lock, says so, and holds it until it is killed.
_HOLDER = """
import sys, time
from icl_theory.engine import workdir
with workdir.lock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(600)
"""


def _snapshot(folder):
  """Every entry under `folder` (itself included): its name -> (mtime in ns, bytes or None for a folder)."""
  seen = {".": (os.stat(folder).st_mtime_ns, None)}
  for root, dirs, names in os.walk(folder):
    for name in dirs + names:
      path = os.path.join(root, name)
      data = None
      if os.path.isfile(path):
        with open(path, "rb") as f:
          data = f.read()
      seen[os.path.relpath(path, folder)] = (os.stat(path).st_mtime_ns, data)
  return seen


def _start_holder(folder):
  child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  line = child.stdout.readline()  # blocks until the child holds the lock (or dies)
  assert line.strip() == "locked", child.stderr.read()
  return child


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
  files.write_json(str(tmp_path / "config.json"), {"seed": 0})
  (tmp_path / "checkpoints").mkdir()
  files.atomic_write_bytes(str(tmp_path / "checkpoints" / "data"), b"\x00\x01")
  holder = _start_holder(tmp_path)
  try:
    before = _snapshot(tmp_path)
    with open(tmp_path / workdir.LOCK_FILE) as f:
      assert f.read().startswith(f"process {holder.pid} on ")
    time.sleep(0.05)  # a write now would move an mtime visibly, on file systems of coarse timestamps too
    named = re.escape(f"workdir={str(tmp_path)!r} is in use by process {holder.pid} on ")
    with pytest.raises(workdir.WorkdirBusy, match=named):
      with workdir.lock(str(tmp_path)):
        pytest.fail("the lock was taken while another process held it")
    assert issubclass(workdir.WorkdirBusy, ConfigError)  # the command lines print it as one line, exit 2
    # The refused attempt only read the holder's line: same names, mtimes and bytes.
    assert _snapshot(tmp_path) == before
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    holder.stderr.close()
  assert holder.returncode == -signal.SIGKILL
  # The OS released the lock with its killed holder, although its line is still in the file.
  with workdir.lock(str(tmp_path)):
    with open(tmp_path / workdir.LOCK_FILE) as f:
      assert f.read().startswith(f"process {os.getpid()} on ")
  with open(tmp_path / workdir.LOCK_FILE) as f:
    assert f.read() == ""  # a released lock names no holder


def test_lock_creates_a_missing_folder_and_is_taken_again_after_release(tmp_path):
  folder = tmp_path / "new" / "run"
  with workdir.lock(str(folder)):
    assert os.path.isfile(folder / workdir.LOCK_FILE)
  with workdir.lock(str(folder)):  # released at the end of the block
    pass


def test_result_files_are_group_readable_under_the_usual_umask(tmp_path):
  # A child of umask 022 (the module reads the umask once, when imported).
  script = ("import sys\n"
            "from icl_theory.engine import files\n"
            "d = sys.argv[1]\n"
            "files.write_json(d + '/a.json', {'x': 1})\n"
            "files.write_jsonl(d + '/b.jsonl', [{'x': 1}])\n"
            "files.write_csv(d + '/c.csv', [{'x': 1.5}])\n"
            "files.atomic_write_bytes(d + '/sub/d.bin', b'abc')\n")
  subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, check=True, umask=0o022)
  for name in ("a.json", "b.jsonl", "c.csv", "sub/d.bin"):
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name
  assert files.read_json(str(tmp_path / "a.json")) == {"x": 1}
  # No temporary file is left beside the results.
  assert sorted(os.listdir(tmp_path)) == ["a.json", "b.jsonl", "c.csv", "sub"]


def test_save_and_load_params_round_trip(tmp_path):
  params = {"layer_0": {"w_pv": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7,
                        "w_kq": np.full((2, 2), -1.5, np.float32)},
            "count": np.array([1, 2, 3], np.int32),
            "scalar": np.float32(0.25)}
  path = str(tmp_path / workdir.PARAMS_FILE)
  workdir.save_params(path, params)
  loaded = workdir.load_params(path)
  assert set(loaded) == set(params) and set(loaded["layer_0"]) == set(params["layer_0"])
  for got, want in [(loaded["layer_0"]["w_pv"], params["layer_0"]["w_pv"]),
                    (loaded["layer_0"]["w_kq"], params["layer_0"]["w_kq"]),
                    (loaded["count"], params["count"]), (loaded["scalar"], params["scalar"])]:
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.asarray(want).dtype and got.shape == np.shape(want)
    np.testing.assert_array_equal(got, np.asarray(want))
  # Rewriting replaces the file whole.
  workdir.save_params(path, {"w": np.zeros(2, np.float32)})
  assert set(workdir.load_params(path)) == {"w"}


def test_a_field_added_since_the_workdir_was_written_counts_at_its_default(tmp_path):
  # config.json from before `new_field` existed: rerun at the default it resumes, at another value it is refused.
  files.write_json(str(tmp_path / "config.json"), {"steps": 10})
  defaults = {"steps": 100, "new_field": "none"}
  workdir.claim(str(tmp_path), {"steps": 10, "new_field": "none"}, (), (), False, defaults=defaults)
  files.write_json(str(tmp_path / "config.json"), {"steps": 10})
  with pytest.raises(ConfigError, match="new_field"):
    workdir.claim(str(tmp_path), {"steps": 10, "new_field": "other"}, (), (), False, defaults=defaults)
  with pytest.raises(ConfigError, match="new_field"):  # without defaults nothing is assumed
    workdir.claim(str(tmp_path), {"steps": 10, "new_field": "none"}, (), (), False)
