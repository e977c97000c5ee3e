r"""Command line: a grid of runs of any experiment, resumable, into one results.csv and figures.

    python -m icl_theory.sweep --config=icl_theory/configs/sweep.py --workdir=DIR [--config.FIELD=...]
    python -m icl_theory.sweep --config=icl_theory/configs/classify_sweep.py --workdir=DIR [--config.FIELD=...]
    icl-sweep ...   (the same, as a console script)

The work is `icl_theory.run_sweep` (icl_theory.engine.sweep); rerunning with the same --workdir skips the
finished groups and resumes an unfinished one from its checkpoint.

On several processes (icl_theory.engine.distributed; README "Running on a cluster"), start
the same command in each, with the same --workdir on a shared file system:

    python -m icl_theory.sweep ... --coordinator_address=HOST:PORT --num_processes=P --process_id=I

or under srun / mpirun, which are detected without those flags.
"""

import os

import jax
from absl import flags
from ml_collections import config_flags

from icl_theory import cli, experiments
from icl_theory.engine import compile_cache, distributed, sharding, sweep, workdir as workdirs
from icl_theory.engine.validation import ConfigError

_DEFAULT_CONFIG = os.path.join(cli.CONFIGS_DIR, "sweep.py")
cli.prepare_argv(_DEFAULT_CONFIG)  # before the config flag reads the command line

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Sweep config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; rerunning with it resumes. Default: a fresh runs/...")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an earlier sweep of another config in --workdir.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "jax.distributed: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "jax.distributed: how many processes run this sweep.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "jax.distributed: this process's index, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start jax.distributed from the environment alone "
                                 "(e.g. a Cloud TPU pod); srun, mpirun and GKE TPU pods are detected anyway.")


def main(argv) -> None:
  cli.only_flags(argv)
  workdir = None
  try:
    sharding.use_cpu_cores()  # before JAX starts: one CPU device per core, the runs of a group split over them
    compile_cache.enable()  # before validation, which may run eager programs (the classifier's patterns)
    experiment = experiments.of(_CONFIG.value)
    sweep.validate_sweep_config(experiment, _CONFIG.value)  # bad fields fail here, before any process connects
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value)
    if jax.process_count() > 1 and not _WORKDIR.value:
      raise ConfigError("workdir=None is not allowed with several processes: give every process the same "
                        "--workdir on a file system they share")
    workdir = _WORKDIR.value or workdirs.default_workdir("sweep")
    rows = sweep.sweep(experiment, _CONFIG.value, workdir, overwrite=_OVERWRITE.value)
  except ConfigError as error:
    cli.fail(str(error))
  except KeyboardInterrupt:
    cli.interrupted(workdir)
  finished = [r for r in rows if r["status"] == "finished"]
  if jax.process_index() != 0:
    print(f"process {jax.process_index()}: {len(finished)}/{len(rows)} of its runs finished; process 0 writes "
          f"results.csv and figures in {workdir}")
    return
  print(experiment.format_sweep(rows))
  print(f"results.csv and figures in {workdir}")


def run() -> None:
  """Console script `icl-sweep`."""
  cli.run(main)


if __name__ == "__main__":
  run()
