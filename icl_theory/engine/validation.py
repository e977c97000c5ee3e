"""Field checks shared by tasks and configs; they run before anything is traced.

Every failure is a `ConfigError` (a ValueError) whose message names the field,
the value and what is allowed, so a command line can print it as one line.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


class ConfigError(ValueError):
  """A field of a task or config holds a value that is not allowed."""


def fail(field: str, value: Any, allowed: str) -> ConfigError:
  return ConfigError(f"{field}={value!r} is not allowed: {allowed}")


def check_int(field: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise fail(field, value, f"an integer >= {minimum}")
  return int(value)


def check_float(field: str, value: Any, *, minimum: float = -math.inf, strict: bool = False) -> float:
  """A finite real number >= minimum (> minimum when strict)."""
  allowed = "a finite number" + (f" {'>' if strict else '>='} {minimum:g}" if math.isfinite(minimum) else "")
  if isinstance(value, (bool, str)):
    raise fail(field, value, allowed)
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise fail(field, value, allowed) from None
  if not math.isfinite(number) or number < minimum or (strict and number == minimum):
    raise fail(field, value, allowed)
  return number


def check_bool(field: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise fail(field, value, "True or False")
  return bool(value)


def check_choice(field: str, value: Any, choices: Sequence[str]) -> str:
  if not isinstance(value, str) or value not in choices:
    raise fail(field, value, f"one of {', '.join(map(repr, choices))}")
  return value
