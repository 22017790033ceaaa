#!/bin/bash

# Parameters
#SBATCH --account=lab
#SBATCH --cpus-per-task=4
#SBATCH --error=FOLDER/%j/%j_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=saev-golden
#SBATCH --mem=12800MB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=FOLDER/%j/%j_0_log.out
#SBATCH --partition=debug
#SBATCH --qos=normal
#SBATCH --signal=USR2@90
#SBATCH --time=90
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output FOLDER/%j/%j_%t_log.out --error FOLDER/%j/%j_%t_log.err python -u -m submitit.core._submit
