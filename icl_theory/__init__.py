"""icl_theory: in-context learning, trained and held against the theorems.

    task = RegressionTask(d=5, n=20, cov_x="geometric:10@0", cov_w="inverse")
    theory.optimal_gamma(task)                 # the closed-form optimum Gamma*
    result = train(config, workdir)            # a trained LSA and its summary
    compare(result.params, task)               # learned against analytic
"""

import jax

# Float32 matrix products at full float32 precision on every backend. GPUs would otherwise
# take TF32 (a 10-bit mantissa) for float32 dots: on an H100, closed forms and their
# implementations then disagreed by 1e-4 to 1e-2 where the tests hold them to 1e-5. These
# problems are small, so the precision costs little. Override after import if wanted:
# jax.config.update("jax_default_matmul_precision", ...).
jax.config.update("jax_default_matmul_precision", "float32")

from icl_theory import baselines, theory  # noqa: E402
from icl_theory.analysis import baseline_risks, compare
from icl_theory.experiments import train
from icl_theory.models.lsa import LSA, effective_gamma, vanishing_parts
from icl_theory.models.softmax_mlp import SoftmaxMLP
from icl_theory.grid import sweep
from icl_theory.tasks import ClassificationTask, Prompts, RegressionTask, sample_prompts
from icl_theory.validation import ConfigError

__all__ = ["LSA", "ClassificationTask", "ConfigError", "Prompts", "RegressionTask", "SoftmaxMLP", "baseline_risks",
           "baselines", "compare", "effective_gamma", "sample_prompts", "sweep", "theory", "train", "vanishing_parts"]
