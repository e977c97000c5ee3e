"""icl_theory: in-context learning, trained and held against the theorems."""

from icl_theory.tasks import Prompts, RegressionTask, sample_prompts
from icl_theory.models.lsa import LSA, effective_gamma, vanishing_parts
