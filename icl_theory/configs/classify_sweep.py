r"""A grid of classification runs over the training alpha, each evaluated at several alpha', S_1 and test lengths.

    python -m icl_theory.sweep --config=icl_theory/configs/classify_sweep.py --workdir=DIR \
        [--config.alpha_values="(0.5,0.8)"] [--config.model_values="('softmax_mlp','gpt')"] \
        [--config.prompt_len_values="(10,20)"] [--config.num_seeds=3] \
        [--config.alpha_test_values="(0.3,0.5,0.7)"] [--config.s1_values="(0.5,1.0,2.0)"] \
        [--config.test_prompt_len_values="(10,20)"] [--config.ood_construction_values="('random',)"] \
        [--config.base.steps=1000]

Every combination of the training axes (alpha_values, model_values,
prompt_len_values) and num_seeds seeds is one trained run of `base`; each trained
run is then evaluated at every combination of the evaluation axes
(alpha_test_values, s1_values, test_prompt_len_values) without retraining, so
adding an evaluation value and rerunning with the same --workdir only
re-evaluates. Runs that differ only in their seed share one compiled program.

The defaults (4 runs in 2 groups, 12 evaluation points each) take under a
minute on 2 CPU cores, mostly compiling and evaluating. Expect in DIR:
results.csv (one row per run and evaluation point), figures/error_vs_alpha_test.png,
error_vs_s1.png, error_vs_test_prompt_len.png and training.png. Both training
alphas reach zero error on every domain at alpha' = 0.5 and 0.7. At alpha' = 0.3,
where the labels' majority is always wrong, the model trained at alpha = 0.5
(whose training prompts' majority said nothing) keeps zero error on unseen
tasks, while the one trained at alpha = 0.8 (whose majority was always right)
keeps zero error on its training tasks only: about 0.7 on unseen tasks. Out of
domain the ODR patterns are built by base.ood_construction (non_training_pairs);
--config.ood_construction_values="('training_pairs','non_training_pairs','random')"
evaluates every construction (results/README.md, classify/ood, has the numbers
for l = 20). Every error has its hinge loss and margin beside it in results.csv.
"""

import ml_collections

from icl_theory.configs import classify


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "classification_sweep"  # a label: the experiment trained is base.experiment

  # The run every grid point starts from (icl_theory/configs/classify.py); its patterns, model sizes,
  # optimizer, ... hold for every run. The axes below override it.
  config.base = classify.get_config()
  config.base.prompt_len = 10            # contexts per training prompt (prompt_len_values overrides it)
  config.base.test_prompt_len = 10       # test prompt length (test_prompt_len_values overrides it)
  config.base.steps = 300                # optimizer steps per run
  config.base.batch_size = 64            # prompts per step
  config.base.learning_rate = 0.2        # peak SGD learning rate
  config.base.warmup_steps = 20          # linear warm-up of the cosine schedule
  config.base.log_every = 100            # steps between progress lines
  config.base.checkpoint_every = 300     # steps between checkpoints (a killed sweep resumes from them)
  config.base.eval_samples = 4096        # fresh prompts per Monte Carlo error
  config.base.test_prompt_lens = (10,)   # single-run tables (a sweep's rows do not use them): kept short
  config.base.test_alphas = (0.5,)       # idem
  config.base.test_s1s = (1.0,)          # idem
  config.base.test_ood_alphas = (0.5,)   # idem

  # Training axes: every combination, times num_seeds, is one trained run.
  config.alpha_values = (0.5, 0.8)       # training alpha: 0.5 ties the labels' majority, 0.8 makes it right
  config.model_values = ("softmax_mlp",)  # models: softmax_mlp (the theory's one layer) | gpt (use optimizer=adam)
  config.prompt_len_values = (10,)       # training prompt lengths
  config.num_seeds = 2                   # seeds base.seed, base.seed + 1, ...

  # Evaluation axes: every trained run is evaluated at every combination, without retraining.
  config.alpha_test_values = (0.3, 0.5, 0.7)  # alpha': at 0.3 the majority is always wrong
  config.s1_values = (1.0, 2.0)               # coefficient sum of the out-of-domain patterns
  config.test_prompt_len_values = (10, 20)    # test prompt lengths
  return config
