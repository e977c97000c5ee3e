"""icl_theory: in-context learning, trained and held against the theorems.

    task = RegressionTask(d=5, n=20, cov_x="geometric:10@0", cov_w="inverse")
    theory.optimal_gamma(task)                 # the closed-form optimum Gamma*
    result = train(config, workdir)            # a trained LSA and its summary
    compare(result.params, task)               # learned against analytic
    run = load_run(workdir)                    # read back later: config, task, params, summary, history

The package is a generic engine (`icl_theory.engine`: training, sweeps,
workdirs) and one package per experiment that plugs into it
(`icl_theory.regression`, `icl_theory.classification`).
"""

from icl_theory.classification.softmax_mlp import SoftmaxMLP
from icl_theory.classification.task import ClassificationPrompts, ClassificationTask
from icl_theory.engine.validation import ConfigError
from icl_theory.experiments import LoadedRun, RunResult, load_run, load_snapshots, run_sweep, train
from icl_theory.regression import baselines, theory
from icl_theory.regression.evaluation import baseline_risks, compare
from icl_theory.regression.lsa import LSA, effective_gamma, vanishing_parts
from icl_theory.regression.task import Prompts, RegressionTask, sample_prompts

__all__ = ["LSA", "ClassificationPrompts", "ClassificationTask", "ConfigError", "Prompts", "RegressionTask",
           "SoftmaxMLP", "baseline_risks", "baselines", "compare", "effective_gamma", "sample_prompts",
           "theory", "train", "vanishing_parts", "load_run", "load_snapshots", "run_sweep", "LoadedRun", "RunResult"]
