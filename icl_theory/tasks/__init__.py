"""Prompt distributions: the in-context tasks and their vmapped samplers."""

from icl_theory.tasks.classification import ClassificationPrompts, ClassificationTask
from icl_theory.tasks.covariance import parse_covariance, resolve_covariance
from icl_theory.tasks.regression import RESPONSES, Prompts, RegressionTask, sample_prompts

# `sample_prompts` is the regression sampler; the classification one is `classification.sample_prompts`.
__all__ = ["RESPONSES", "ClassificationPrompts", "ClassificationTask", "Prompts", "RegressionTask",
           "parse_covariance", "resolve_covariance", "sample_prompts"]
