r"""Writes results/lsa/default_run/ and results/lsa/sweep_small/: the core run and the 8-run sweep.

    python3 scripts/core_results.py [--out=results/lsa]

default_run/  the README's first command (the default config): summary.json,
              metrics.jsonl, lsa.png. Claim: one step of GD, eta* = n/(n+d+1).
sweep_small/  the sweep issue's 8-run grid (n in {4, 16}, cov_x in {identity,
              geometric:10}, 2 seeds, d = 3): results.csv and figures/.
              Claim: Gamma* = n [(n+1) cov_x + (tr cov_x + sigma^2) I]^-1.

Training happens in a temporary workdir; only the small result files are
copied (never checkpoints). About 20 seconds on 2 CPU cores.
"""

import os
import shutil
import tempfile

from absl import flags, logging

import icl_theory
from icl_theory import cli
from icl_theory.configs import lsa, sweep

_OUT = flags.DEFINE_string("out", os.path.join("results", "lsa"), "Folder for the result files.")


def _copy(names, source: str, target: str) -> None:
  os.makedirs(target, exist_ok=True)
  for name in names:
    src, dst = os.path.join(source, name), os.path.join(target, name)
    if os.path.isdir(src):
      shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
      shutil.copy2(src, dst)


def main(argv) -> None:
  cli.only_flags(argv)
  with tempfile.TemporaryDirectory() as tmp:
    run = lsa.get_config()
    result = icl_theory.train(run, os.path.join(tmp, "default_run"))
    _copy(("summary.json", "metrics.jsonl", "lsa.png"), result.workdir, os.path.join(_OUT.value, "default_run"))
    logging.info("default run: gamma_rel_error %.4f", result.summary["gamma_rel_error"])

    grid = sweep.get_config()
    grid.n_values, grid.cov_x_values, grid.num_seeds = (4, 16), ("identity", "geometric:10"), 2
    grid.base.d = 3
    icl_theory.run_sweep(grid, os.path.join(tmp, "sweep_small"))
    _copy(("results.csv", "figures"), os.path.join(tmp, "sweep_small"), os.path.join(_OUT.value, "sweep_small"))


if __name__ == "__main__":
  cli.run(main)
