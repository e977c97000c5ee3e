"""engine.compiling: XLA:CPU options where they pay, JAX's defaults elsewhere and where XLA lacks an option."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.engine import compiling


@dataclasses.dataclass
class _Device:
  platform: str


class _Lowered:
  """Records how it is compiled; `refuse` raises as an XLA without the option would."""

  def __init__(self, refuse: str | None = None):
    self.calls, self.refuse = [], refuse

  def compile(self, compiler_options=None):
    self.calls.append(compiler_options)
    if compiler_options and self.refuse:
      raise jax.errors.JaxRuntimeError(self.refuse)
    return "compiled"


def test_options_apply_on_cpus_only():
  options = {"xla_cpu_use_fusion_emitters": False}
  on_cpu = _Lowered()
  assert compiling.compile_lowered(on_cpu, [_Device("cpu"), _Device("cpu")], options) == "compiled"
  assert on_cpu.calls == [options]
  on_gpu = _Lowered()
  compiling.compile_lowered(on_gpu, [_Device("gpu")], options)
  assert on_gpu.calls == [None]
  without = _Lowered()
  compiling.compile_lowered(without, [_Device("cpu")], None)
  assert without.calls == [None]


def test_an_xla_without_the_option_compiles_with_its_defaults_and_other_errors_propagate():
  old = _Lowered(refuse="INVALID_ARGUMENT: No such compile option: 'xla_cpu_use_fusion_emitters'")
  assert compiling.compile_lowered(old, [_Device("cpu")], compiling.FAST_CPU_COMPILE) == "compiled"
  assert old.calls == [compiling.FAST_CPU_COMPILE, None]
  broken = _Lowered(refuse="INTERNAL: something else")
  with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
    compiling.compile_lowered(broken, [_Device("cpu")], compiling.FAST_CPU_COMPILE)


def test_a_real_program_compiled_fast_gives_the_same_values():
  x = np.linspace(-3, 3, 101, dtype=np.float32)
  fn = lambda v: jnp.tanh(v) * 2.0 + v**2
  lowered = jax.jit(fn).lower(x)
  fast = compiling.compile_lowered(lowered, jax.devices(), compiling.FAST_CPU_COMPILE)
  np.testing.assert_allclose(fast(x), jax.jit(fn)(x), rtol=1e-6, atol=1e-6)


def test_serial_codegen_scopes_its_option_over_every_compile_and_nests():
  fast = compiling.FAST_CPU_COMPILE
  lowered = _Lowered()
  compiling.compile_lowered(lowered, [_Device("cpu")])
  with compiling.serial_codegen():
    compiling.compile_lowered(lowered, [_Device("cpu")])
    compiling.compile_lowered(lowered, [_Device("cpu")], fast)
    compiling.compile_lowered(lowered, [_Device("gpu")])
    with compiling.serial_codegen():
      compiling.compile_lowered(lowered, [_Device("cpu")])
    compiling.compile_lowered(lowered, [_Device("cpu")])  # the inner scope's end keeps the outer's
  compiling.compile_lowered(lowered, [_Device("cpu")], fast)
  serial = compiling.SERIAL_CODEGEN
  assert lowered.calls == [None, serial, {**serial, **fast}, None, serial, serial, fast]


def test_serial_codegen_on_a_real_program_gives_the_same_values():
  x = np.linspace(-3, 3, 101, dtype=np.float32)
  fn = lambda v: jnp.tanh(v) * 2.0 + jnp.exp(-v**2)
  with compiling.serial_codegen():
    serial = compiling.compile_lowered(jax.jit(fn).lower(x), jax.devices())
  np.testing.assert_array_equal(serial(x), jax.jit(fn)(x))
