r"""One LSA layer on in-context linear regression (Mahankali, Hashimoto, Ma 2023).

    python -m icl_theory.main --config=icl_theory/configs/lsa.py [--config.n=40 ...]

Expect, for this isotropic default (d=5, n=20, no noise), Gamma_eff = eta* I
with eta* = n / (n + d + 1) = 0.769, gamma_rel_error below 0.01, and a final
loss at R* = d (d + 1) / (n + d + 1) = 1.154, in about 10 seconds on 2 CPU cores.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  placeholder = ml_collections.config_dict.placeholder  # a typed field whose default is None
  config.experiment = "lsa_regression"  # which experiment icl_theory.train runs

  # The task (icl_theory.RegressionTask).
  config.d = 5                   # covariate dimension
  config.n = 20                  # context pairs per prompt
  config.noise_std = 0.0         # sigma: y = f(x) + N(0, sigma^2)
  config.cov_x = "identity"      # covariate covariance spec: identity | diag:v1,.. | geometric:COND, optional @SEED
  config.cov_w = "identity"      # task-vector covariance spec, as cov_x, or 'inverse' (= cov_x^-1)
  config.response = "linear"     # linear | relu | tanh | cube | abs | mlp
  config.mlp_width = 16          # hidden width of the random ReLU network (response='mlp')
  config.num_tasks = 0           # M > 0: M task vectors drawn once from the seed, each prompt uses one (0: fresh w)

  # The model.
  config.num_layers = 1          # LSA layers; the theorems are about one
  config.init_scale = 0.02       # std of the N(0, .) initialisation of W_PV and W_KQ ...
  config.vanishing_init_scale = 0.0  # ... but of p_x and q21 (README: rank-one saddles); all entries train
  config.freeze_vanishing_parts = False  # ablation: hold p_x and q21 at 0
  config.parameterization = "full"  # full | sparse (Ahn et al.: x-x blocks, p_y) | sparse_gd (B = 0) | y_to_x
  config.p_y_init = placeholder(float)  # W_PV's y-y entry p_y at init. None: 1 in the sparse
                                 # parameterisations (Ahn et al.'s fixed value), an init_scale draw in 'full' 
  config.readout = "auto"        # plus | minus the query's y-entry; auto: minus for sparse, y_to_x (Ahn et al.), else plus

  # Optimisation.
  config.optimizer = "sgd"       # sgd (momentum 0.9) | adam; README: why not adam by default
  config.learning_rate = 0.05    # peak learning rate
  config.clip_norm = 1.0         # clip each gradient to this global norm (0: no clipping)
  config.preconditioner = "none" # none | curvature: Q11's gradient mapped by H^-p (.) cov_x^-p (ill-conditioned cov_x)
  config.preconditioner_power = 0.5  # p of the curvature preconditioner (1: the Newton step, which traps runs)
  config.schedule = "cosine"     # cosine (linear warm-up, then cosine decay to 0) | constant
  config.warmup_steps = 100      # linear warm-up steps of the cosine schedule
  config.batch_size = 1024       # prompts per step, fresh each step
  config.data_parallel = True    # split each step's batch over all of the process's devices (single runs)
  config.sampler = "auto"        # auto | wishart (the context's statistic S, query integrated out) | tokens |
                                 # integrated_query (explicit context, query integrated out: any response)
  config.antithetic = False      # each prompt with its mirror (y negated): symmetric responses, not 'wishart'
  config.steps = 1000            # optimizer steps
  config.seed = 0                # one root key: init, batches and evaluation derive from it

  # Bookkeeping.
  config.log_every = 100         # steps between progress lines and metrics.jsonl rows
  config.checkpoint_every = 1000 # steps between orbax checkpoints (0: none); a rerun resumes
  config.keep_checkpoints = 3    # how many recent checkpoints to keep
  config.eval_samples = 100_000  # fresh prompts for the Monte Carlo risks in summary.json
  config.gamma_mc_samples = 1_000_000  # prompts for the Monte Carlo Gamma* and eta_f (nonlinear responses)
  config.pool_bayes_samples = 4096     # prompts for the Bayes predictors' risks of a task pool (num_tasks > 0)
  # Test distribution of every metric (None: as trained; icl_theory.regression.shift), evaluation only.
  config.n_test = placeholder(int)              # test prompt length
  config.cov_x_test = placeholder(str)          # test covariate covariance spec, as cov_x
  config.cov_w_test = placeholder(str)          # test task prior, as cov_w ('inverse': cov_x_test^-1)
  config.noise_std_test = placeholder(float)    # test response noise
  return config
