r"""Command line: a trained LSA run scored on another test distribution, without retraining.

    python -m icl_theory.shift --workdir=RUN [--run=INDEX] [--n_test=40] [--cov_x_test=SPEC] \
        [--cov_w_test=SPEC] [--noise_std_test=SIGMA] [--eval_samples=N] [--json]

RUN is a single run's workdir (`python -m icl_theory.main`), or a sweep's with --run the run's index
in its grid. Prints the exact risk of the learned Gamma_eff on the test distribution, R*_test, their
gap, the network's Monte Carlo risk and the baselines (`icl_theory.regression.shift.evaluate_shift`);
--json prints its dict. A sweep scores every run at many test values with the evaluation axes
n_test_values, cov_x_test_values, cov_w_test_values, noise_std_test_values instead.
"""

import json

from absl import flags

from icl_theory import cli, experiments
from icl_theory.engine.validation import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's workdir (or a sweep's, with --run).")
_RUN = flags.DEFINE_integer("run", None, "For a sweep's workdir: the run's index in the grid's order.")
_N_TEST = flags.DEFINE_integer("n_test", None, "Test prompt length (default: as trained).")
_COV_X_TEST = flags.DEFINE_string("cov_x_test", None, "Test covariate covariance spec, e.g. 'diag:0.5,1,2@3'.")
_COV_W_TEST = flags.DEFINE_string("cov_w_test", None, "Test task prior spec ('inverse': cov_x_test^-1).")
_NOISE_STD_TEST = flags.DEFINE_float("noise_std_test", None, "Test response noise sigma.")
_EVAL_SAMPLES = flags.DEFINE_integer("eval_samples", None, "Monte Carlo prompts (default: the run's eval_samples).")
_JSON = flags.DEFINE_bool("json", False, "Print the result as JSON.")


def _table(out: dict) -> str:
  num = lambda v: "-" if v is None else f"{v:.4f}"
  test = out["test_task"]
  lines = [f"test distribution: n={test['n']}, noise_std={test['noise_std']:g}",
           f"  learned Gamma_eff, exact   {num(out['learned_risk_test'])}",
           f"  network, Monte Carlo       {num(out['model_risk_mc_test'])} +- {num(out['model_risk_mc_test_stderr'])}",
           f"  R*_test (Gamma*_test)      {num(out['optimal_risk_test'])}",
           f"  gap (learned - R*_test)    {num(out['risk_gap_test'])}",
           f"  Gamma*_train on the test   {num(out['train_optimal_risk_test'])}",
           f"  ridge / Bayes              {num(out['ridge_risk_test'])} +- {num(out['ridge_risk_test_stderr'])}",
           f"  OLS                        {num(out['ols_risk_test'])} +- {num(out['ols_risk_test_stderr'])}",
           f"  one-step GD (best eta)     {num(out['one_step_gd_risk_test'])}"]
  return "\n".join(lines)


def main(argv) -> None:
  cli.only_flags(argv)
  if not _WORKDIR.value:
    cli.fail("workdir=None is not allowed: the trained run's folder, --workdir=RUN")
  try:
    from icl_theory.regression import shift  # after flag parsing: JAX starts here
    loaded = experiments.load_run(_WORKDIR.value, _RUN.value)
    if loaded.config.get("experiment") != "lsa_regression":
      raise ConfigError(f"workdir={_WORKDIR.value!r} is not allowed: it holds a {loaded.config.get('experiment')!r} "
                        "run; test-time shift scores LSA regression runs")
    out = shift.evaluate_shift(loaded, num_samples=_EVAL_SAMPLES.value, n_test=_N_TEST.value,
                               cov_x_test=_COV_X_TEST.value, cov_w_test=_COV_W_TEST.value,
                               noise_std_test=_NOISE_STD_TEST.value)
  except ConfigError as error:
    cli.fail(str(error))
  except KeyboardInterrupt:
    cli.interrupted(None)
  print(json.dumps(out) if _JSON.value else _table(out))


def run() -> None:
  """Console script `icl-shift`."""
  cli.run(main)


if __name__ == "__main__":
  run()
