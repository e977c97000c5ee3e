r"""A grid of LSA runs over prompt length and covariance (the 60-run grid of the benchmark).

    python -m icl_theory.sweep --config=icl_theory/configs/sweep.py --workdir=DIR \
        [--config.n_values="(4,16)"] [--config.cov_x_values="('identity','geometric:10')"] \
        [--config.base.d=3] [--config.base.steps=1000]

Every combination of the *_values fields and num_seeds seeds is one run of the
`base` config. Runs of the same n and response share one compiled, vmapped
program (seeds, covariances and noise levels only change array values), sharded
over all devices. Expect results.csv with gamma_rel_error of a few percent at
most for every run, and the learned risk on top of R* in risk_vs_n.png.
"""

import ml_collections

from icl_theory.configs import lsa


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "lsa_sweep"  # a label: the experiment is base.experiment

  # The run every grid point starts from (icl_theory/configs/lsa.py); its d, steps,
  # batch size, optimizer, ... hold for every run. Grid fields below override it.
  config.base = lsa.get_config()
  config.base.steps = 2000
  config.base.batch_size = 512
  config.base.log_every = 500
  config.base.checkpoint_every = 500
  config.base.eval_samples = 20_000
  config.base.gamma_mc_samples = 200_000

  # The grid: every combination is one run.
  config.n_values = (4, 8, 16, 32, 64)  # context lengths
  config.cov_x_values = ("identity", "geometric:2@0", "geometric:5@0", "geometric:10@0")  # covariate covariances
  config.cov_w_values = ("identity",)   # task covariances ('inverse' = cov_x^-1)
  config.noise_std_values = (0.5,)      # response noise levels (> 0 keeps ridge and OLS off zero risk)
  config.response_values = ("linear",)  # responses
  config.num_layers_values = (1,)       # LSA depths (each depth is its own group of runs)
  placeholder = ml_collections.config_dict.placeholder  # None: not swept (set a tuple to sweep it)
  config.num_tasks_values = placeholder(tuple)  # pool sizes M (0: a fresh task per prompt), e.g. "(0,16,256)"
  # Evaluation axes: every trained run scored at each test value, without retraining (regression/shift.py).
  config.n_test_values = placeholder(tuple)         # test prompt lengths
  config.cov_x_test_values = placeholder(tuple)     # test covariate covariances
  config.cov_w_test_values = placeholder(tuple)     # test task priors
  config.noise_std_test_values = placeholder(tuple) # test noise levels
  config.num_seeds = 3                  # seeds base.seed, base.seed + 1, ...
  return config
