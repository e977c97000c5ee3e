"""Covariance matrices by name, so that configs and command lines can say which.

Grammar of a spec string::

    identity                 the d x d identity
    diag:v1,v2,...,vd        diag(v1, ..., vd); every v > 0
    geometric:COND           eigenvalues log-spaced between two values whose ratio is
                             COND >= 1 (max/min eigenvalue = COND), rescaled so that the
                             trace is d: E|x|^2 = d, as for the identity
    SPEC@SEED                SPEC rotated by a random orthogonal U (seeded):  U SPEC U^T
    inverse                  (for cov_w only) the inverse of cov_x

The rotation keeps the spectrum and so the condition number; it only turns the
eigenvectors away from the coordinate axes, which is what separates a genuinely
non-isotropic problem from a per-coordinate rescaling.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from icl_theory.engine.validation import ConfigError, fail

CovSpec = Union[None, str, np.ndarray]

ALLOWED = ("None, a d x d array, or a spec string: 'identity', 'diag:v1,...,vd', 'geometric:COND', "
           "each optionally followed by '@SEED'; cov_w also takes 'inverse'")

_SYMMETRY_RTOL = 1e-5


def random_orthogonal(d: int, seed: int) -> np.ndarray:
  """Haar-distributed d x d orthogonal matrix from a seed (QR with the sign fix)."""
  rng = np.random.default_rng(seed)
  q, r = np.linalg.qr(rng.standard_normal((d, d)))
  return q * np.sign(np.diag(r))


def geometric_spectrum(d: int, cond: float) -> np.ndarray:
  """Eigenvalues, largest first, with max/min = cond and trace d."""
  if d == 1:
    return np.ones(1)
  spectrum = cond ** (-np.linspace(0.0, 1.0, d))
  return spectrum * (d / spectrum.sum())




def _parse_base(spec: str, d: int, field: str) -> np.ndarray:
  family, _, arg = spec.partition(":")
  if family == "identity" and not arg:
    return np.eye(d)
  if family == "diag" and arg:
    try:
      values = np.array([float(v) for v in arg.split(",")])
    except ValueError:
      raise fail(field, spec, "'diag:' takes comma-separated numbers, e.g. 'diag:1,2,3'") from None
    if values.shape != (d,):
      raise fail(field, spec, f"'diag:' needs exactly d={d} values, got {values.size}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
      raise fail(field, spec, "'diag:' values must be finite and > 0")
    return np.diag(values)
  if family == "geometric" and arg:
    try:
      cond = float(arg)
    except ValueError:
      raise fail(field, spec, "'geometric:' takes one number COND >= 1, e.g. 'geometric:10'") from None
    if not np.isfinite(cond) or cond < 1:
      raise fail(field, spec, "'geometric:COND' needs a finite COND >= 1")
    if d == 1 and cond != 1:
      raise fail(field, spec, "with d=1 the only geometric spectrum is COND=1")
    return np.diag(geometric_spectrum(d, cond))
  raise fail(field, spec, ALLOWED)


def parse_covariance(spec: str, d: int, field: str = "cov") -> np.ndarray:
  """The d x d covariance that `spec` names (see the module docstring)."""
  if not isinstance(spec, str) or not spec.strip():
    raise fail(field, spec, ALLOWED)
  spec = spec.strip()
  base, at, seed_text = spec.partition("@")
  cov = _parse_base(base, d, field)
  if at:
    try:
      seed = int(seed_text)
    except ValueError:
      raise fail(field, spec, "the suffix '@SEED' takes a non-negative integer, e.g. 'geometric:10@0'") from None
    if seed < 0:
      raise fail(field, spec, "the suffix '@SEED' takes a non-negative integer")
    u = random_orthogonal(d, seed)
    cov = u @ cov @ u.T
    cov = 0.5 * (cov + cov.T)
  return cov


def _short(cov: np.ndarray) -> str:
  return np.array2string(cov, precision=3, threshold=16, separator=",").replace("\n", "")


def check_covariance(cov, d: int, field: str) -> np.ndarray:
  """Returns `cov` as a float64 array after checking shape, symmetry and definiteness."""
  try:
    cov = np.asarray(cov, dtype=np.float64)
  except (TypeError, ValueError):
    raise fail(field, cov, "a numeric d x d array") from None
  if cov.shape != (d, d):
    raise ConfigError(f"{field} has shape {cov.shape}: it must be (d, d) = ({d}, {d})")
  if not np.all(np.isfinite(cov)):
    raise ConfigError(f"{field}={_short(cov)} is not allowed: a covariance must be finite")
  scale = max(np.abs(cov).max(), 1e-30)
  if np.abs(cov - cov.T).max() > _SYMMETRY_RTOL * scale:
    raise ConfigError(f"{field}={_short(cov)} is not allowed: a covariance must be symmetric "
                      f"(max |C - C^T| = {np.abs(cov - cov.T).max():.3g})")
  cov = 0.5 * (cov + cov.T)
  min_eig = np.linalg.eigvalsh(cov).min()
  if min_eig <= 1e-8 * scale:
    raise ConfigError(f"{field}={_short(cov)} is not allowed: a covariance must be positive definite "
                      f"(smallest eigenvalue {min_eig:.3g})")
  return cov


def resolve_covariance(spec: CovSpec, d: int, field: str, cov_x: np.ndarray | None = None) -> np.ndarray:
  """None, an array or a spec string -> a checked float64 covariance.

  `cov_x` is needed for the spec 'inverse' (allowed for cov_w only).
  """
  if spec is None:
    return np.eye(d)
  if isinstance(spec, str):
    if spec.strip() == "inverse":
      if cov_x is None:
        raise fail(field, spec, "'inverse' is only allowed for cov_w (it means cov_x^-1)")
      return check_covariance(np.linalg.inv(cov_x), d, field)
    return check_covariance(parse_covariance(spec, d, field), d, field)
  return check_covariance(spec, d, field)
