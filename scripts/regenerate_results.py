r"""Regenerates every folder of results/ with one command, and records how long each script took.

    python3 scripts/regenerate_results.py [--only=core,lsa_paper,...] [--workdir=DIR]

Runs, one after another, each script that writes results/ (as its own process,
as a user would): core_results.py (lsa/default_run, lsa/sweep_small),
lsa_paper.py (lsa/isotropic, preconditioned, nonlinear), lsa_depth.py (lsa/depth), classify_paper.py
(classify/prompt_length, mechanism, pruning, classical), classify_ood.py
(classify/ood), diversity.py (diversity), shift.py (shift) and benchmark.py
(benchmark.json; run it on an idle machine). Each script's wall time is written to results/regenerate_times.json as soon as it
finishes. With --workdir every script keeps its training there (DIR/<script>) and
a rerun after a kill resumes where it stopped; a script that fails stops the
command with its exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import flags

from icl_theory.engine import files
from icl_theory import cli

# name -> (script, whether it takes --workdir)
SCRIPTS = {
    "core": ("core_results.py", False),
    "lsa_paper": ("lsa_paper.py", True),
    "lsa_depth": ("lsa_depth.py", True),
    "classify_paper": ("classify_paper.py", True),
    "classify_ood": ("classify_ood.py", True),
    "diversity": ("diversity.py", True),
    "shift": ("shift.py", True),
    "benchmark": ("benchmark.py", False),
}
_ONLY = flags.DEFINE_list("only", list(SCRIPTS), f"Which scripts: a subset of {','.join(SCRIPTS)}.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep each script's training in DIR/<script> (resumable).")
_TIMES = os.path.join("results", "regenerate_times.json")


def main(argv) -> None:
  cli.only_flags(argv)
  cli.check_subset("only", _ONLY.value, list(SCRIPTS))
  here = os.path.dirname(os.path.abspath(__file__))
  times = files.read_json(_TIMES) if os.path.exists(_TIMES) else {}
  for name in _ONLY.value:
    script, takes_workdir = SCRIPTS[name]
    command = [sys.executable, os.path.join(here, script)]
    if takes_workdir and _WORKDIR.value:
      command.append(f"--workdir={os.path.join(_WORKDIR.value, name)}")
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
      print(f"error: {script} failed with status {done.returncode}", file=sys.stderr)
      sys.exit(done.returncode)
    times[name] = {"script": f"scripts/{script}", "wall_seconds": round(time.perf_counter() - start, 1),
                   "finished": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu_cores": os.cpu_count()}
    files.write_json(_TIMES, times)
    print(f"== {name}: {times[name]['wall_seconds']} s", flush=True)


if __name__ == "__main__":
  cli.run(main)
