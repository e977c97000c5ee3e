r"""Softmax attention + ReLU MLP on in-context binary classification (Li, Wang, Lu, Cui, Chen 2024).

    python -m icl_theory.main --config=icl_theory/configs/classify.py [--config.alpha_test=0.3 ...]

Trains on 12 of the 30 ordered pattern pairs at alpha = 1/2: half the contexts
share the query's pattern, so the labels' majority says nothing (a tie in every
prompt) and only attention to the query's pattern classifies. Expect, in 20-30 s
on 2 CPU cores: zero error on training tasks, unseen tasks and out of domain at
s1 = 1 (majority vote: 0.5), with about 0.99 / 0.88 / 0.62 of the attention on
the contexts that share the query's pattern. At alpha' = 0.3, where the majority
is always wrong, unseen tasks stay at zero error; out of domain the error is 1
for s1 <= 1 and falls to ~0 by s1 = 1.5-2 (the table of ood_error by s1).

The paper's deeper check, a 3-layer, 2-head GPT-2-style transformer on the same prompts:

    python -m icl_theory.main --config=icl_theory/configs/classify.py --config.model=gpt \
        --config.optimizer=adam --config.learning_rate=1e-3 --config.steps=600

(scripts/classify_ood.py trains both models over seeds and compares them out of domain.)
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "classification"  # which experiment icl_theory.train runs

  # The patterns and tasks (icl_theory.ClassificationTask), drawn from the seed.
  config.M1 = 6                  # in-domain-relevant (IDR) patterns; tasks are ordered pairs of them
  config.M2 = 24                 # in-domain-irrelevant (IDI) patterns
  config.d_x = 30                # input dimension (>= M1 + M2: all patterns orthonormal)
  config.d_y = 10                # label-embedding dimension: tokens are (x, y q), q a unit vector in R^d_y
  config.kappa_max = 0.5         # x = mu + kappa nu, kappa ~ U[-kappa_max, kappa_max] (THEORY: a guess)
  config.s1 = 1.0                # coefficient sum of each out-of-domain (ODR) pattern
  config.num_ood_patterns = 3    # M1': ODR patterns, each on its own group of IDR patterns (2..M1)
  # Which IDR patterns each ODR pattern mixes (THEORY: the paper fixes only c >= 0, sum S1; every choice is ours):
  # training_pairs ({0,1},{2,3},{4,5}: training pairs, which training teaches to repel in attention) |
  # non_training_pairs ({0,3},{1,4},{2,5}) | random (random groups, Dirichlet weights, averaged over ood_draws draws).
  # The headline ood_* figures use this one; summary.json reports every construction (ood_{construction}_*).
  config.ood_construction = "non_training_pairs"
  config.ood_draws = 8           # blocks of M1' ODR patterns (the random construction's draws; the others repeat)
  # Noise (our choice: the paper's is unknown), in training and test prompts alike; 0 = none.
  config.label_noise = 0.0       # probability that each context label is flipped (the query's label is kept)
  config.feature_noise = 0.0     # std of N(0, .) added to every input coordinate, contexts and query

  # The training prompts.
  config.alpha = 0.5             # fraction of contexts sharing the query's pattern, (0, 1]: floor(alpha l) of them
  config.prompt_len = 20         # contexts per prompt

  # The model: softmax_mlp (icl_theory.classification.softmax_mlp.SoftmaxMLP, the theory's one layer) | gpt (the
  # GPT-2-style icl_theory.classification.transformer.Transformer; train it with optimizer=adam, learning_rate=1e-3).
  config.model = "softmax_mlp"
  # softmax_mlp only:
  config.m = 64                  # MLP neurons (even: a_i = +1/m for half, -1/m for the rest, fixed)
  config.qk_init_scale = 0.3     # W_Q, W_K start at this times I ... (THEORY: picks the paper's mechanism)
  config.qk_init_noise = 0.01    # ... plus N(0, this^2) entries
  config.init_scale = 1.0        # W_V, W_O entries start N(0, init_scale^2 / (d_x + d_y))
  # gpt only (pre-LayerNorm blocks, no positions: the prompt is a set):
  config.num_layers = 3          # transformer blocks
  config.num_heads = 2           # attention heads per block (they split the width)
  config.width = 64              # residual-stream width, a multiple of num_heads
  config.mlp_ratio = 4           # MLP hidden width = mlp_ratio * width (GELU)

  # Optimisation: hinge loss max(0, 1 - y F(P)) on fresh prompts of the training tasks.
  config.optimizer = "sgd"       # sgd (momentum 0.9) | adam
  config.learning_rate = 0.1     # peak learning rate
  config.clip_norm = 0.0         # clip each gradient to this global norm (0: no clipping)
  config.schedule = "cosine"     # cosine (linear warm-up, then cosine decay to 0) | constant
  config.warmup_steps = 50       # linear warm-up steps of the cosine schedule
  config.batch_size = 128        # prompts per step, fresh each step
  config.data_parallel = True    # split each step's batch over all of the process's devices
  config.steps = 1000            # optimizer steps
  config.seed = 0                # one root key: patterns, init, batches and evaluation derive from it

  # Evaluation (changing only these and rerunning in the same workdir re-evaluates without retraining).
  config.alpha_test = 0.5        # alpha' of the headline errors
  config.test_prompt_len = 20    # prompt length of the headline errors
  config.test_prompt_lens = (2, 4, 10, 20, 40)  # lengths of the error-by-length table (at alpha_test)
  config.test_alphas = (0.1, 0.3, 0.5, 0.7, 0.9)     # alpha' of the error-by-alpha table (at test_prompt_len)
  config.test_s1s = (0.5, 1.0, 1.5, 2.0)             # s1 of the out-of-domain table, per construction ...
  config.test_ood_alphas = (0.3, 0.5)                # ... at each of these alpha' (0.3: the majority is always wrong)
  config.eval_samples = 16_384   # fresh prompts per Monte Carlo error

  # Bookkeeping.
  config.log_every = 50          # steps between progress lines and metrics.jsonl rows
  config.checkpoint_every = 500  # steps between orbax checkpoints (0: none); a rerun resumes
  config.keep_checkpoints = 2    # how many recent checkpoints to keep
  return config
