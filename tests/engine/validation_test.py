"""Random invalid configs are refused with a ConfigError naming the field, before anything is traced."""

import math
import re

import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icl_theory.engine import validation
from icl_theory.configs import lsa as lsa_config
from icl_theory.regression import experiment as lsa_regression

BASE = lsa_config.get_config().to_dict()

_not_a_number = st.one_of(st.none(), st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2))


def _bad_int(minimum):
  return st.one_of(st.integers(max_value=minimum - 1), st.floats(allow_nan=True), _not_a_number)


def _bad_float(minimum, strict):
  # -0.0 == 0.0 is allowed where 0 is, though hypothesis orders it below 0.0: filter by value.
  below = st.floats(max_value=minimum, allow_nan=False).filter(lambda v: v < minimum or (strict and v == minimum))
  return st.one_of(below, st.just(math.nan), st.just(math.inf), st.just(-math.inf), _not_a_number)


def _bad_choice(choices):
  return st.one_of(st.text(max_size=8).filter(lambda s: s not in choices), _not_a_number)


_number = st.floats(min_value=-5, max_value=5, allow_nan=False).map(lambda v: f"{v:g}")
_bad_cov_spec = st.one_of(
    st.text(alphabet="abcdefgxyz:@,.-", max_size=12).filter(lambda s: s.strip() not in ("identity", "inverse")),
    st.lists(_number, min_size=1, max_size=8).filter(lambda v: len(v) != BASE["d"]).map(lambda v: "diag:" + ",".join(v)),
    st.lists(st.floats(max_value=0, allow_nan=False), min_size=5, max_size=5).map(
        lambda v: "diag:" + ",".join(f"{x:g}" for x in v)),
    st.floats(max_value=0.999, allow_nan=False).map(lambda c: f"geometric:{c:g}"),
    st.integers(max_value=-1).map(lambda s: f"identity@{s}"),
    st.text(alphabet="xyz", min_size=1, max_size=3).map(lambda s: f"geometric:4@{s}"),
    st.just("geometric:"), st.just("diag:"), st.just("diag:1,2,,4,5"),
)

INVALID = {
    "d": _bad_int(1), "n": _bad_int(1), "mlp_width": _bad_int(1), "num_layers": _bad_int(1),
    "batch_size": _bad_int(1), "steps": _bad_int(1), "log_every": _bad_int(1), "keep_checkpoints": _bad_int(1),
    "eval_samples": _bad_int(2), "gamma_mc_samples": _bad_int(2),
    "seed": _bad_int(0), "warmup_steps": _bad_int(0), "checkpoint_every": _bad_int(0),
    "noise_std": _bad_float(0.0, strict=False), "learning_rate": _bad_float(0.0, strict=True),
    "init_scale": _bad_float(0.0, strict=True), "vanishing_init_scale": _bad_float(0.0, strict=False),
    "clip_norm": _bad_float(0.0, strict=False),
    "response": _bad_choice(("linear", "relu", "tanh", "cube", "abs", "mlp")),
    "optimizer": _bad_choice(("adam", "sgd")), "schedule": _bad_choice(("cosine", "constant")),
    "sampler": _bad_choice(("auto", "tokens", "wishart")),
    "data_parallel": st.one_of(st.integers(), st.text(max_size=4), st.none()),
    "cov_x": _bad_cov_spec, "cov_w": _bad_cov_spec,
}


def _config(**changes):
  return ml_collections.ConfigDict({**BASE, **changes})  # a fresh dict: any type may be set


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(INVALID)).flatmap(lambda f: st.tuples(st.just(f), INVALID[f])))
def test_random_invalid_field_is_named(field_and_value):
  field, value = field_and_value
  with pytest.raises(validation.ConfigError) as error:
    lsa_regression.validate_config(_config(**{field: value}))
  assert re.match(rf"{field}[= ]", str(error.value)), str(error.value)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4).flatmap(lambda d: st.tuples(
    st.just(d), st.lists(st.integers(-3, 3), min_size=d * d, max_size=d * d))))
def test_random_matrices_are_accepted_only_if_symmetric_positive_definite(d_and_entries):
  # Integer entries keep every matrix far from the tolerances: a symmetric integer matrix
  # is singular or has |det| >= 1, so its smallest eigenvalue is 0 or >= 1 / (3d)^(d-1).
  d, entries = d_and_entries
  cov = np.array(entries, dtype=np.float64).reshape(d, d)
  spd = np.array_equal(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 1e-3
  config = _config(d=d, cov_x=cov)
  if spd:
    np.testing.assert_allclose(lsa_regression.validate_config(config).cov_x, cov, rtol=1e-6, atol=1e-7)
  else:
    with pytest.raises(validation.ConfigError, match=r"^cov_x[= ]"):
      lsa_regression.validate_config(config)


def test_valid_default_passes():
  task = lsa_regression.validate_config(_config())
  assert task.d == BASE["d"] and task.n == BASE["n"]
