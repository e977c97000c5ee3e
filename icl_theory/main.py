r"""Command line: train one run and print its summary (for the LSA: learned against analytic).

    python -m icl_theory.main [--config=icl_theory/configs/lsa.py] [--config.FIELD=VALUE ...]
                              [--workdir=DIR] [--overwrite]
    python -m icl_theory.main --config=icl_theory/configs/classify.py [--config.FIELD=VALUE ...]

With no arguments: the default LSA config into a fresh folder under runs/.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from icl_theory import experiments
from icl_theory.engine import trainer
from icl_theory.engine.validation import ConfigError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "lsa.py")

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; rerunning with it resumes. Default: a fresh runs/...")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an earlier run of another config in --workdir.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  experiments.use_cpu_cores(_CONFIG.value)  # one data-parallel CPU device per core, where that is faster
  try:
    result = experiments.train(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except (ConfigError, trainer.TrainingDiverged) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2 if isinstance(error, ConfigError) else 1)
  print(experiments.format_summary(result.summary))
  print(f"\nwritten to {result.workdir}")


def run() -> None:
  """Console script `icl-train`."""
  logging.set_verbosity(logging.INFO)
  app.run(main)


if __name__ == "__main__":
  run()
