"""Tests for the covariance spec parser (icl_theory/regression/covariance.py)."""

from __future__ import annotations

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from icl_theory.regression import covariance
from icl_theory.regression.task import RegressionTask
from icl_theory.engine.validation import ConfigError

_EPS64 = np.finfo(np.float64).eps
_EPS32 = np.finfo(np.float32).eps


def _resolve(spec, d: int, field: str = "cov_x", cov_x: np.ndarray | None = None) -> np.ndarray:
  return covariance.resolve_covariance(spec, d, field, cov_x=cov_x)


class ValidSpecTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 5)
  def test_identity_and_none(self, d: int):
    np.testing.assert_array_equal(_resolve("identity", d), np.eye(d))
    np.testing.assert_array_equal(_resolve(None, d), np.eye(d))
    np.testing.assert_array_equal(_resolve("  identity ", d), np.eye(d))

  def test_diag(self):
    np.testing.assert_array_equal(_resolve("diag:1,2.5,0.25", 3), np.diag([1.0, 2.5, 0.25]))
    np.testing.assert_array_equal(_resolve("diag:1e-2", 1), np.array([[0.01]]))

  def test_array_passes_through_as_float64(self):
    cov_DxD = np.array([[2, 1], [1, 2]], dtype=np.int32)
    out = _resolve(cov_DxD, 2)
    self.assertEqual(out.dtype, np.float64)
    np.testing.assert_array_equal(out, cov_DxD)

  @parameterized.product(d=(2, 3, 7), cond=(1.0, 2.0, 10.0, 1000.0))
  def test_geometric_condition_and_trace(self, d: int, cond: float):
    cov_DxD = _resolve(f"geometric:{cond:g}", d)
    np.testing.assert_array_equal(cov_DxD, np.diag(np.diag(cov_DxD)))
    eig_D = np.sort(np.diag(cov_DxD))[::-1]
    self.assertTrue(np.all(eig_D > 0))
    np.testing.assert_allclose(eig_D[0] / eig_D[-1], cond, rtol=100 * _EPS64)
    np.testing.assert_allclose(np.trace(cov_DxD), d, rtol=100 * _EPS64)
    # Log-spaced: consecutive ratios are all equal to cond^(1/(d-1)).
    np.testing.assert_allclose(eig_D[:-1] / eig_D[1:], cond ** (1.0 / (d - 1)), rtol=100 * _EPS64)

  def test_geometric_in_one_dimension(self):
    np.testing.assert_array_equal(_resolve("geometric:1", 1), np.eye(1))

  @parameterized.parameters("geometric:10", "diag:0.5,1,3,4", "identity")
  def test_rotation_keeps_spectrum(self, base: str):
    d = 4
    plain_DxD = _resolve(base, d)
    rotated_DxD = _resolve(f"{base}@3", d)
    np.testing.assert_array_equal(rotated_DxD, rotated_DxD.T)
    np.testing.assert_allclose(np.linalg.eigvalsh(rotated_DxD), np.linalg.eigvalsh(plain_DxD),
                               atol=100 * _EPS64 * d)
    np.testing.assert_allclose(np.trace(rotated_DxD), np.trace(plain_DxD), rtol=100 * _EPS64)

  def test_rotation_changes_eigenvectors(self):
    d = 4
    plain_DxD = _resolve("geometric:10", d)
    rotated_DxD = _resolve("geometric:10@3", d)
    # The spread of the spectrum is 10x, so a generic rotation leaves a visible off-diagonal part.
    off_diag = rotated_DxD - np.diag(np.diag(rotated_DxD))
    self.assertGreater(np.abs(off_diag).max(), 0.1)
    # Eigenvectors of the rotated matrix are not the coordinate axes: |cosines| < 1.
    _, vecs_DxD = np.linalg.eigh(rotated_DxD)
    self.assertLess(np.abs(vecs_DxD).max(), 0.99)
    self.assertFalse(np.allclose(rotated_DxD, plain_DxD))

  def test_rotation_is_reproducible_per_seed(self):
    d = 5
    first = _resolve("geometric:10@7", d)
    np.testing.assert_array_equal(first, _resolve("geometric:10@7", d))
    np.testing.assert_array_equal(first, covariance.parse_covariance("geometric:10@7", d))
    other = _resolve("geometric:10@8", d)
    self.assertGreater(np.abs(first - other).max(), 0.1)

  def test_random_orthogonal_is_orthogonal(self):
    u_DxD = covariance.random_orthogonal(6, 0)
    np.testing.assert_allclose(u_DxD @ u_DxD.T, np.eye(6), atol=100 * _EPS64)

  def test_inverse_for_cov_w(self):
    d = 4
    cov_x = _resolve("geometric:20@1", d)
    cov_w = _resolve("inverse", d, field="cov_w", cov_x=cov_x)
    cond = np.linalg.cond(cov_x)
    np.testing.assert_allclose(cov_w @ cov_x, np.eye(d), atol=100 * _EPS64 * cond)
    np.testing.assert_array_equal(cov_w, cov_w.T)

  def test_inverse_through_the_task(self):
    d = 3
    task = RegressionTask(d=d, n=4, cov_x="geometric:20@1", cov_w="inverse")
    cov_x = np.asarray(task.cov_x, np.float64)
    cond = np.linalg.cond(cov_x)
    # Both matrices are stored as float32: the product is I up to float32 rounding times cond.
    np.testing.assert_allclose(np.asarray(task.cov_w, np.float64) @ cov_x, np.eye(d),
                               atol=10 * _EPS32 * cond * d)


class BadSpecTest(parameterized.TestCase):

  def test_config_error_is_a_value_error(self):
    self.assertTrue(issubclass(ConfigError, ValueError))

  @parameterized.parameters(
      ("cov_x", "gaussian"),            # unknown family
      ("cov_w", "Identity"),            # names are case-sensitive
      ("cov_x", "identity:3"),          # identity takes no argument
      ("cov_x", "diag:"),               # no values
      ("cov_w", "diag:1,x,3"),          # malformed number
      ("cov_x", "diag:1,,3"),           # empty field
      ("cov_x", "diag:1,2"),            # d=3 needs three values
      ("cov_w", "diag:1,2,3,4"),
      ("cov_x", "diag:1,0,3"),          # not positive
      ("cov_w", "diag:1,-2,3"),
      ("cov_x", "diag:1,nan,3"),
      ("cov_x", "diag:1,inf,3"),
      ("cov_x", "geometric:"),
      ("cov_w", "geometric:ten"),
      ("cov_x", "geometric:0.5"),       # COND < 1
      ("cov_x", "geometric:-3"),
      ("cov_w", "geometric:inf"),
      ("cov_x", "geometric:nan"),
      ("cov_x", "geometric:10@-1"),     # negative seed
      ("cov_w", "geometric:10@x"),
      ("cov_x", "geometric:10@1.5"),
      ("cov_x", "geometric:10@"),
      ("cov_x", "geometric:10@1@2"),
      ("cov_x", "inverse"),             # 'inverse' is for cov_w only
      ("cov_x", ""),
  )
  def test_bad_string_names_field_and_value(self, field: str, spec: str):
    d = 3
    cov_x = np.eye(d) if field == "cov_w" else None
    with self.assertRaises(ConfigError) as ctx:
      _resolve(spec, d, field=field, cov_x=cov_x)
    self.assertIn(f"{field}={spec!r}", str(ctx.exception))

  @parameterized.parameters(
      ("cov_w", "inverse@1", "inverse"),
      ("cov_x", "gaussian@2", "gaussian"),
      ("cov_w", "diag:1,2@4", "diag:1,2"),
      ("cov_x", "geometric:0.5@0", "geometric:0.5"),
  )
  def test_bad_base_with_seed_names_the_bad_part(self, field: str, spec: str, base: str):
    # A bad base is reported as the base alone (the part before '@SEED'), which is the offending part.
    with self.assertRaises(ConfigError) as ctx:
      _resolve(spec, 3, field=field, cov_x=np.eye(3))
    self.assertIn(f"{field}={base!r}", str(ctx.exception))

  def test_geometric_with_cond_above_one_in_one_dimension(self):
    with self.assertRaisesRegex(ConfigError, r"cov_x='geometric:10'"):
      _resolve("geometric:10", 1)

  @parameterized.parameters("cov_x", "cov_w")
  def test_task_reports_the_right_field(self, field: str):
    with self.assertRaisesRegex(ConfigError, rf"^{field}='diag:1,2'"):
      RegressionTask(d=3, n=4, **{field: "diag:1,2"})

  def test_task_rejects_inverse_for_cov_x(self):
    with self.assertRaisesRegex(ConfigError, r"^cov_x='inverse'"):
      RegressionTask(d=3, n=4, cov_x="inverse")

  @parameterized.parameters("cov_x", "cov_w")
  def test_wrong_shape(self, field: str):
    with self.assertRaises(ConfigError) as ctx:
      _resolve(np.eye(3)[:2], 3, field=field, cov_x=np.eye(3))
    message = str(ctx.exception)
    self.assertIn(field, message)
    self.assertIn("(2, 3)", message)

  def test_wrong_shape_vector(self):
    with self.assertRaisesRegex(ConfigError, r"cov_x has shape \(3,\)"):
      _resolve(np.ones(3), 3)

  @parameterized.parameters("cov_x", "cov_w")
  def test_not_symmetric(self, field: str):
    with self.assertRaises(ConfigError) as ctx:
      _resolve(np.array([[1.0, 0.75], [0.0, 1.0]]), 2, field=field, cov_x=np.eye(2))
    message = str(ctx.exception)
    self.assertTrue(message.startswith(f"{field}="), message)
    self.assertIn("0.75", message)
    self.assertIn("symmetric", message)

  @parameterized.parameters(
      ("cov_x", [[1.0, 3.0], [3.0, 1.0]], "-2"),   # indefinite: eigenvalues 4, -2
      ("cov_w", [[1.0, 1.0], [1.0, 1.0]], "1."),   # singular
      ("cov_x", [[-1.0, 0.0], [0.0, -1.0]], "-1"),
  )
  def test_not_positive_definite(self, field: str, cov, shown: str):
    with self.assertRaises(ConfigError) as ctx:
      _resolve(np.array(cov), 2, field=field, cov_x=np.eye(2))
    message = str(ctx.exception)
    self.assertTrue(message.startswith(f"{field}="), message)
    self.assertIn(shown, message)
    self.assertIn("positive definite", message)

  def test_non_finite_array(self):
    with self.assertRaisesRegex(ConfigError, r"^cov_w=.*nan"):
      _resolve(np.array([[1.0, np.nan], [np.nan, 1.0]]), 2, field="cov_w", cov_x=np.eye(2))

  def test_non_numeric_array(self):
    with self.assertRaisesRegex(ConfigError, r"^cov_x="):
      _resolve([["a", "b"], ["c", "d"]], 2)

  def test_non_string_spec_to_parse(self):
    with self.assertRaisesRegex(ConfigError, r"^cov_x=3 "):
      covariance.parse_covariance(3, 2, "cov_x")


if __name__ == "__main__":
  absltest.main()
