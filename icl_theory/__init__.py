"""icl_theory: in-context learning, trained and held against the theorems.

    task = RegressionTask(d=5, n=20, cov_x="geometric:10@0", cov_w="inverse")
    theory.optimal_gamma(task)                 # the closed-form optimum Gamma*
    result = train(config, workdir)            # a trained LSA and its summary
    compare(result.params, task)               # learned against analytic
"""

from icl_theory import baselines, theory
from icl_theory.analysis import baseline_risks, compare
from icl_theory.experiments import train
from icl_theory.models.lsa import LSA, effective_gamma, vanishing_parts
from icl_theory.models.softmax_mlp import SoftmaxMLP
from icl_theory.grid import sweep
from icl_theory.tasks import ClassificationTask, Prompts, RegressionTask, sample_prompts
from icl_theory.validation import ConfigError

__all__ = ["LSA", "ClassificationTask", "ConfigError", "Prompts", "RegressionTask", "SoftmaxMLP", "baseline_risks",
           "baselines", "compare", "effective_gamma", "sample_prompts", "sweep", "theory", "train", "vanishing_parts"]
