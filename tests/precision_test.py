"""Importing icl_theory changes no global JAX setting: matmul precision and XLA_FLAGS stay the user's."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import os
before = os.environ.get("XLA_FLAGS")
import jax
p = jax.config.jax_default_matmul_precision
import icl_theory
import icl_theory.experiments, icl_theory.regression.experiment, icl_theory.engine.run, icl_theory.engine.sweep
assert jax.config.jax_default_matmul_precision == p, (p, jax.config.jax_default_matmul_precision)
assert os.environ.get("XLA_FLAGS") == before, (before, os.environ.get("XLA_FLAGS"))
# The library's own scope sets full float32 inside it, and restores the user's setting after it.
from icl_theory.engine import precision
assert precision.scoped(lambda: jax.config.jax_default_matmul_precision)() == "float32"
assert jax.config.jax_default_matmul_precision == p, (p, jax.config.jax_default_matmul_precision)
print("unchanged", repr(p), repr(before))
"""


@pytest.mark.parametrize("env", [
    {},  # JAX's default precision, no XLA_FLAGS
    {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false", "JAX_DEFAULT_MATMUL_PRECISION": "bfloat16"},  # the user's
], ids=["unset", "set"])
def test_import_leaves_matmul_precision_and_xla_flags_alone(env):
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_DEFAULT_MATMUL_PRECISION")}
  child = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**base, **env})
  assert child.returncode == 0, child.stderr[-3000:]
  expected = f"unchanged {env.get('JAX_DEFAULT_MATMUL_PRECISION')!r} {env.get('XLA_FLAGS')!r}"
  assert child.stdout.strip() == expected, child.stdout
