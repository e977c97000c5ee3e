r"""Command line: train one run and print its summary (for the LSA: learned against analytic).

    python -m icl_theory.main [--config=lsa] [--config.FIELD=VALUE ...] [--workdir=DIR] [--overwrite]
    python -m icl_theory.main --config=classify [--config.FIELD=VALUE ...]

`--config` is a config file's path or the name of one in icl_theory/configs. With
no arguments: the default LSA config into a fresh folder under runs/. Bad input
exits with status 2 and one line; a diverged run with 1; Ctrl-C with 130, keeping
the last checkpoint (rerun the same command to resume).
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from icl_theory import cli, experiments
from icl_theory.engine import compile_cache, trainer, workdir as workdirs
from icl_theory.engine.validation import ConfigError

_DEFAULT_CONFIG = os.path.join(cli.CONFIGS_DIR, "lsa.py")
cli.prepare_argv(_DEFAULT_CONFIG)  # before the config flag reads the command line

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config: a file, or a name in "
                                          "icl_theory/configs (lsa, classify).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; rerunning with it resumes. Default: a fresh runs/...")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an earlier run of another config in --workdir.")


def main(argv) -> None:
  cli.only_flags(argv)
  workdir = None
  try:
    experiments.use_cpu_cores(_CONFIG.value)  # before JAX starts: one data-parallel CPU device per core, where faster
    # The cache first: validating the classifier draws its patterns, eager programs a rerun then loads
    # instead of compiling (0.58 s of a warm default classify run).
    compile_cache.enable()
    experiment = experiments.of(_CONFIG.value)
    experiment.validate(_CONFIG.value)  # bad fields fail before anything compiles
    workdir = _WORKDIR.value or workdirs.default_workdir(experiment.name)
    result = experiments.train(_CONFIG.value, workdir, overwrite=_OVERWRITE.value)
  except ConfigError as error:
    cli.fail(str(error))
  except trainer.TrainingDiverged as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    cli.interrupted(workdir)
  print(experiments.format_summary(result.summary))
  print(f"\nwritten to {result.workdir}")


def run() -> None:
  """Console script `icl-train`."""
  cli.run(main)


if __name__ == "__main__":
  run()
