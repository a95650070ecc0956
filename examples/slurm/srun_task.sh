#!/usr/bin/env bash
# One training process per GPU under srun: torch.distributed's variables from SLURM's, then the
# command replaces this shell, so SLURM's signals (SIGUSR1 before the time limit, SIGTERM on
# preemption) reach the training process itself. (torchrun would not pass them on: its agent
# dies on SIGUSR1 and kills its workers 30 s after a SIGTERM, too soon to save a checkpoint.)
export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
exec "$@"
