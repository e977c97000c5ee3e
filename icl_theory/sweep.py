r"""Command line: a grid of LSA runs, resumable, into one results.csv and figures.

    python -m icl_theory.sweep --config=icl_theory/configs/sweep.py --workdir=DIR [--config.FIELD=...]
    icl-sweep ...   (the same, as a console script)

The work is `icl_theory.grid.sweep`; rerunning with the same --workdir skips the
finished groups and resumes an unfinished one from its checkpoint.
"""

import os
import sys

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from icl_theory import experiments, grid
from icl_theory.validation import ConfigError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "sweep.py")

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Sweep config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; rerunning with it resumes. Default: a fresh runs/...")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an earlier sweep of another config in --workdir.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = _WORKDIR.value or experiments.default_workdir("sweep")
  try:
    rows = grid.sweep(_CONFIG.value, workdir, overwrite=_OVERWRITE.value)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  finished = [r for r in rows if r["status"] == "finished"]
  print(f"{len(finished)}/{len(rows)} runs finished; results.csv and figures in {workdir}")
  errors = np.array([r["gamma_rel_error"] for r in finished if r["gamma_rel_error"] is not None])
  if errors.size:
    print(f"gamma_rel_error: median {np.median(errors):.4f}, max {errors.max():.4f}")


def run() -> None:
  """Console script `icl-sweep`."""
  logging.set_verbosity(logging.INFO)
  app.run(main)


if __name__ == "__main__":
  run()
