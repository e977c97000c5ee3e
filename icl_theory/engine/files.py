"""Result files written atomically: a kill leaves the old file or the new one, never half."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np



def to_builtin(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): to_builtin(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_builtin(v) for v in value]
  if hasattr(value, "tolist"):  # numpy and jax arrays and scalars
    return to_builtin(np.asarray(value).tolist())
  if isinstance(value, float) and not np.isfinite(value):
    return None if np.isnan(value) else str(value)
  return value


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


# Results are for the group to read, as a plain `open` would make them (a temporary file is 0600).
_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, fsyncs it, and renames it over `path`.

  The file gets the mode a plain `open` would give it (0644 under the usual umask).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    os.fchmod(fd, _FILE_MODE)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode())


def write_json(path: str, obj: Any) -> None:
  """JSON with arrays as nested lists and non-finite floats as null / 'inf'."""
  atomic_write_text(path, json.dumps(to_builtin(obj), indent=2, sort_keys=False) + "\n")


def write_csv(path: str, rows: Sequence[dict], fields: Sequence[str] | None = None, significant: int = 7) -> None:
  """A table, one row per dict: `fields` (default: the first row's keys) as columns, floats to
  `significant` digits, None as an empty cell."""
  columns = list(fields or rows[0])
  cell = lambda v: "" if v is None else (f"{v:.{significant}g}" if isinstance(v, float) else v)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(columns)
  writer.writerows([cell(row.get(k)) for k in columns] for row in rows)
  atomic_write_text(path, buffer.getvalue())


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
  atomic_write_text(path, "".join(json.dumps(to_builtin(r)) + "\n" for r in rows))


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def remove(directory: str, names: Iterable[str]) -> None:
  """Deletes the files and folders `names` of `directory` that exist (for --overwrite)."""
  for name in names:
    target = os.path.join(directory, name)
    if os.path.isdir(target):
      shutil.rmtree(target)
    elif os.path.exists(target):
      os.remove(target)
