"""Workdirs: the folder a run or a sweep owns while it runs, and what it leaves there.

- `lock(workdir)`: an OS file lock held for as long as the process works in the
  folder. A second process is refused at once (`WorkdirBusy`, one line naming the
  holder) and writes nothing; the OS releases the lock when the holder exits or is
  killed, so a crashed run never leaves its folder locked.
- `claim(...)`: records the config in config.json and refuses a folder that holds
  a run of another config (a rerun of the same config resumes).
- `save_params` / `load_params`: the trained parameters as one msgpack file,
  readable without knowing the model (for `load_run`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
from typing import Any, Iterator, Sequence

import flax.serialization
import jax
import numpy as np

from icl_theory.engine import files
from icl_theory.engine.validation import ConfigError

LOCK_FILE = ".lock"
PARAMS_FILE = "params.msgpack"


class WorkdirBusy(ConfigError):
  """Another live process works in this workdir."""


def default_workdir(prefix: str, root: str = "runs") -> str:
  """A fresh folder name runs/<prefix>-<timestamp>[-k] (not created)."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  path, k = os.path.join(root, f"{prefix}-{stamp}"), 1
  while os.path.exists(path):
    path, k = os.path.join(root, f"{prefix}-{stamp}-{k}"), k + 1
  return path


@contextlib.contextmanager
def lock(workdir: str, name: str = LOCK_FILE) -> Iterator[None]:
  """Holds an exclusive lock on `workdir` (created if missing) for the duration of the block.

  Raises `WorkdirBusy` naming the holder if another process holds it. The
  refused process only opens the existing lock file for reading the holder's
  line: nothing in the folder changes.
  """
  path = os.path.join(workdir, name)
  writable = True
  if os.path.exists(path):
    try:
      fd = os.open(path, os.O_RDWR)
    except PermissionError:  # another user's lock file: still lockable, and its holder still readable
      fd, writable = os.open(path, os.O_RDONLY), False
  else:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      if error.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
        raise
      holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
      raise WorkdirBusy(f"workdir={workdir!r} is in use by {holder}: wait for it to finish, or use another "
                        "--workdir") from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    if writable:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since {started})\n".encode(), 0)
    try:
      yield
    finally:
      if writable:
        os.ftruncate(fd, 0)  # the file stays (removing it would race a waiting locker); only its holder line goes
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def with_defaults(held: dict, defaults: dict) -> dict:
  """A config written earlier, with the fields added to the code since then at their defaults."""
  return {**files.to_builtin(defaults), **held}


def claim(workdir: str, wanted: dict, outputs: Sequence[str], free_fields: Sequence[str], overwrite: bool,
          filename: str = "config.json", defaults: dict | None = None) -> None:
  """Records the config `wanted` in workdir/`filename`, refusing a workdir that holds another.

  Fields in `free_fields` (bookkeeping, evaluation-only) may differ. A field the
  held config lacks counts as its value in `defaults` (it did not exist when the
  workdir was written, so the run had its default behaviour). With `overwrite`
  the earlier `outputs` are removed first. Raises ConfigError.
  """
  path = os.path.join(workdir, filename)
  if overwrite:
    files.remove(workdir, outputs)
  if os.path.exists(path):
    held = with_defaults(files.read_json(path), defaults or {})
    differ = sorted(k for k in set(wanted) | set(held)
                    if k not in free_fields and files.to_builtin(wanted.get(k)) != held.get(k))
    if differ:
      raise ConfigError(f"workdir={workdir!r} holds a run of a different config (fields {', '.join(differ)} "
                        "differ): use a new --workdir or pass --overwrite")
  files.write_json(path, wanted)


def save_params(path: str, params: Any) -> None:
  """Writes a parameter pytree (host copies) as msgpack, atomically."""
  files.atomic_write_bytes(path, flax.serialization.msgpack_serialize(jax.device_get(params)))


def load_params(path: str) -> Any:
  """The parameter pytree `save_params` wrote: nested dicts of numpy arrays."""
  with open(path, "rb") as f:
    tree = flax.serialization.msgpack_restore(f.read())
  return jax.tree.map(np.asarray, tree)
