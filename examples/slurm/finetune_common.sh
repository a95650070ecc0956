# The shared part of the recipes (bloomz-*.slurm, llama-3.1-8b-xp3.slurm, qwen2.5-7b-xp3.slurm),
# sourced after they set the model and its layout (RUN_NAME NLAYERS NHIDDEN NHEADS TP PP
# MICRO_BATCH_SIZE GLOBAL_BATCH_SIZE PRECISION TRAIN_ITERS DEFAULT_NNODES DS_CONFIG, and for a
# family other than BLOOM its architecture flags ARCH_FLAGS and its padded vocabulary
# PADDED_VOCAB; for LoRA, its --lora-* flags LORA_FLAGS and its learning rate LR, 2e-5 without).
# It builds finetune_xp3.py's flags, then either prints the launch plan (DRY_RUN=1: world size,
# gradient accumulation, stages, memory per GPU; nothing launched, no GPU needed) or starts one
# process per GPU with srun.
#
# Every launch is the same command: the run resumes from the newest checkpoint in CHECKPOINT_DIR
# when there is one, and otherwise starts from INIT_CHECKPOINT with a fresh optimizer and
# progress (with LORA_FLAGS, INIT_CHECKPOINT is the frozen model, and CHECKPOINT_DIR holds the
# adapters alone). Before the time limit SLURM sends SIGUSR1 (#SBATCH --signal); the run finishes
# its step, saves and exits 0, and the job requeues itself until TRAIN_ITERS is reached.
#
# Moving a run to another layout (TP, PP or the node count changed) with its optimizer state:
# make its newest checkpoint universal (python tools/convert_checkpoint/to_universal.py
# --checkpoint-dir OLD_CHECKPOINT_DIR), then submit with UNIVERSAL_FROM=OLD_CHECKPOINT_DIR and a
# new, empty CHECKPOINT_DIR: the first launch resumes from the universal checkpoint
# (--universal-checkpoint: weights, Adam moments, data position, LR schedule; RNG reseeded), and
# the requeued ones from CHECKPOINT_DIR as always.
#
# Environment (defaults in brackets):
#   TOKENIZER        the model's local tokenizer folder (the HF checkpoint has one)    [required]
#   INIT_CHECKPOINT  the HF checkpoint converted for this TP by
#                    tools/convert_checkpoint/hf_to_megatron.py  [$REPO_DIR/checkpoints/$RUN_NAME-init]
#   UNIVERSAL_FROM   a checkpoint folder with a universal checkpoint to start from instead   [unset]
#   CHECKPOINT_DIR   this run's checkpoints                     [$REPO_DIR/checkpoints/$RUN_NAME]
#   DATA_DIR         submit_preprocess_xp3.sh's output, with xp3_train.txt and xp3_valid.txt
#                                                                          [$REPO_DIR/data/xp3]
#   LOG_DIR          TensorBoard, the main log, the kill switch    [$REPO_DIR/logs/$RUN_NAME]
#   NNODES           [the allocation's, else the recipe's]; GPUS_PER_NODE [8]
#   TRAIN_ITERS, SAVE_INTERVAL [100], EVAL_INTERVAL [250], EVAL_ITERS [1] (per language group),
#   DIST_TIMEOUT_MINUTES [20]: how long a collective waits for a dead or stuck rank
#   PYTHON [python3], MASTER_PORT [6000], REPO_DIR [the submit folder], DRY_RUN [0]
# shellcheck shell=bash

REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
PYTHON=${PYTHON:-python3}
TOKENIZER=${TOKENIZER:?set TOKENIZER to a local tokenizer folder of the model}
INIT_CHECKPOINT=${INIT_CHECKPOINT:-$REPO_DIR/checkpoints/$RUN_NAME-init}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-$REPO_DIR/checkpoints/$RUN_NAME}
DATA_DIR=${DATA_DIR:-$REPO_DIR/data/xp3}
LOG_DIR=${LOG_DIR:-$REPO_DIR/logs/$RUN_NAME}
NNODES=${SLURM_JOB_NUM_NODES:-${NNODES:-$DEFAULT_NNODES}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
KILL_SWITCH=$LOG_DIR/kill-switch

if [[ -n ${UNIVERSAL_FROM:-} ]]; then
    if [[ $(realpath -m "$UNIVERSAL_FROM") == $(realpath -m "$CHECKPOINT_DIR") ]]; then
        echo "error: UNIVERSAL_FROM is CHECKPOINT_DIR: give the run at the new layout a new CHECKPOINT_DIR" >&2
        exit 2
    fi
    START=(--load "$UNIVERSAL_FROM" --universal-checkpoint)
else
    START=(--load "$INIT_CHECKPOINT" --no-load-optim --reset-progress)
fi

FLAGS=(
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --pp-partition-method "type:transformer|embedding"
    --num-layers "$NLAYERS" --hidden-size "$NHIDDEN" --num-attention-heads "$NHEADS"
    ${ARCH_FLAGS[@]+"${ARCH_FLAGS[@]}"}
    --tokenizer-name-or-path "$TOKENIZER" --pad-vocab-size-to "${PADDED_VOCAB:-250880}"
    --seq-length 2048 --micro-batch-size "$MICRO_BATCH_SIZE" --global-batch-size "$GLOBAL_BATCH_SIZE"
    --train-iters "$TRAIN_ITERS" "--$PRECISION" --seed 42 --checkpoint-activations
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --weight-decay 1e-4
    --lr "${LR:-2e-5}" --lr-decay-style constant --lr-warmup-samples 0 --clip-grad 1.0
    --norm-target-loss
    ${LORA_FLAGS[@]+"${LORA_FLAGS[@]}"}
    --train-weighted-split-paths-path "$DATA_DIR/xp3_train.txt"
    --valid-weighted-split-paths-path "$DATA_DIR/xp3_valid.txt"
    "${START[@]}"
    --save "$CHECKPOINT_DIR" --save-interval "${SAVE_INTERVAL:-100}" --checkpoint-fallback
    --log-interval 1 --eval-interval "${EVAL_INTERVAL:-250}" --eval-iters "${EVAL_ITERS:-1}"
    --tensorboard-dir "$LOG_DIR/tensorboard" --kill-switch-path "$KILL_SWITCH" --exit-signal-handler
    --distributed-backend nccl --distributed-timeout-minutes "${DIST_TIMEOUT_MINUTES:-20}"
    --deepspeed --deepspeed_config "$REPO_DIR/examples/slurm/$DS_CONFIG"
)

if [[ ${DRY_RUN:-0} == 1 ]]; then
    WORLD_SIZE=$((NNODES * GPUS_PER_NODE)) exec "$PYTHON" "$REPO_DIR/finetune_xp3.py" "${FLAGS[@]}" --dry-run
fi

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-6000}
# NCCL: a failed or timed-out collective ends the process (no silent hang); warnings in the log.
# If NCCL picks the wrong network, name yours: export NCCL_SOCKET_IFNAME=ib0 (or hsn0, eth0 ...).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1

# The batch shell outlives the training processes: a signal meant for them must not end the job
# (and kill them) before they have saved.
trap 'echo "batch shell: signal received; waiting for the training processes to save"' TERM USR1
mkdir -p "$LOG_DIR"
status=0
srun --kill-on-bad-exit=1 --wait=60 --ntasks-per-node="$GPUS_PER_NODE" \
    "$REPO_DIR/examples/slurm/srun_task.sh" "$PYTHON" "$REPO_DIR/finetune_xp3.py" "${FLAGS[@]}" \
    2>&1 | tee -a "$LOG_DIR/main_log.txt" || status=$?

reached=$(cat "$CHECKPOINT_DIR/latest_checkpointed_iteration.txt" 2>/dev/null || echo 0)
if (( status == 0 && reached < TRAIN_ITERS )) && [[ ! -e $KILL_SWITCH ]]; then
    echo "saved at iteration $reached of $TRAIN_ITERS: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
