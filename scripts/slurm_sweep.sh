#!/bin/bash
# A sweep over several machines under SLURM: one process per task, all running the same command.
#
#   sbatch scripts/slurm_sweep.sh [--config.n_values="(4,8,16,32,64,128)" ...]
#
# srun starts one task per node here; icl_theory.sweep sees SLURM's variables and starts
# jax.distributed itself (no --coordinator_address needed). Each task trains whole groups
# of runs (one n and response each) on its own devices, and task 0 writes results.csv and
# the figures into WORKDIR, which must be on a file system every node sees. Resubmitting
# with the same WORKDIR resumes: finished groups are skipped, an unfinished one restarts
# from its last checkpoint. For one process per GPU instead, set --ntasks-per-node to the
# node's GPU count and --gpus-per-task=1.
#
#SBATCH --job-name=icl-sweep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=%x-%j.out
##SBATCH --gpus-per-task=1        # on a GPU partition (and: pip install -e ".[cuda]")

set -euo pipefail
WORKDIR="${WORKDIR:-runs/sweep-${SLURM_JOB_ID}}"
CONFIG="${CONFIG:-icl_theory/configs/sweep.py}"

srun python3 -m icl_theory.sweep --config="${CONFIG}" --workdir="${WORKDIR}" "$@"
