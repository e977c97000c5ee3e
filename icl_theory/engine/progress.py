"""Progress lines: through absl's logging on the command lines, through Python's logging from a notebook.

The engine logs its progress (training steps, compiling, evaluating) with
`absl.logging`, whose records go to Python's "absl" logger. A command line shows
them through absl's own handler. Called from Python, nothing would show them:
`shown(verbose=True)` puts a short stderr handler on that logger for the
duration of a call, unless absl's handler or the user's own logging already
prints them; `shown(verbose=False)` keeps the call quiet.
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import sys
import time
from typing import Iterator

from absl import logging

FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%H:%M:%S"


class LibraryInfoFilter(pylogging.Filter):
  """Keeps the console to the engine's own progress: other libraries' INFO records (orbax logs every
  save through absl) are dropped; their warnings pass. A filter on the handler rather than a
  verbosity switch: no global state to save and restore around every save."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "icl_theory" in record.pathname


def quiet_libraries(handler: pylogging.Handler | None = None) -> None:
  """Puts `LibraryInfoFilter` on `handler` (default: absl's own), once."""
  handler = handler or logging.get_absl_handler()
  if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(LibraryInfoFilter())


def _printed_elsewhere(logger: pylogging.Logger) -> bool:
  """Whether INFO records of `logger` already reach a handler (absl's, or one the user configured)."""
  if logger.handlers or logging.get_absl_handler() in pylogging.getLogger().handlers:
    return True
  root = pylogging.getLogger()
  return bool(root.handlers) and root.level <= pylogging.INFO


@contextlib.contextmanager
def shown(verbose: bool = True) -> Iterator[None]:
  """Within the block, the engine's INFO progress lines are printed (verbose) or dropped (not verbose)."""
  logger = logging.get_absl_logger()
  level, propagate, handler = logger.level, logger.propagate, None
  if not verbose:
    logger.setLevel(pylogging.WARNING)
  elif not _printed_elsewhere(logger):
    handler = pylogging.StreamHandler(sys.stderr)
    handler.setFormatter(pylogging.Formatter(FORMAT, DATE_FORMAT))
    quiet_libraries(handler)
    logger.addHandler(handler)
    logger.setLevel(pylogging.INFO)
    logger.propagate = False  # printed once, here
  try:
    yield
  finally:
    logger.setLevel(level)
    logger.propagate = propagate
    if handler is not None:
      logger.removeHandler(handler)


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
  """Logs '<what> ...' before the block and '<what>: N.N s' after it."""
  logging.info("%s ...", what)
  start = time.perf_counter()
  yield
  logging.info("%s: %.1f s", what, time.perf_counter() - start)
