#!/usr/bin/env bash
# The CPU demo's finetuning step (`make demo` runs it): a tiny BLOOM (or, with FAMILY=llama, a
# tiny Llama), converted from its HF folder, trained on the packed demo corpus by 2 gloo processes,
# data-parallel with ZeRO-1 (for a model this small, twice as fast as TP=2 on 2 cores), the LM head
# and its loss computed on the target tokens only (--lm-head-loss chunked). The same command runs
# on GPUs (NCCL) unchanged; see examples/ for the cluster recipes.
#
# Environment: PYTHON (default python3), DEMO_DIR (default demo), FAMILY (default bloom), ITERS
# (default 500).
set -euo pipefail

PYTHON=${PYTHON:-python3}
DEMO_DIR=${DEMO_DIR:-demo}
FAMILY=${FAMILY:-bloom}
ITERS=${ITERS:-500}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}

rm -rf "$DEMO_DIR/checkpoints/${FAMILY}z-tiny" "$DEMO_DIR/tensorboard/$FAMILY"

"$PYTHON" -m torch.distributed.run --nproc-per-node 2 finetune_xp3.py \
    --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 \
    --load "$DEMO_DIR/checkpoints/${FAMILY}-tiny" --save "$DEMO_DIR/checkpoints/${FAMILY}z-tiny" \
    --tokenizer-name-or-path "$DEMO_DIR/tokenizer" \
    --train-weighted-split-paths "train: 1 0:1 $DEMO_DIR/data/xp3_demo_train" \
    --valid-weighted-split-paths "valid: 1 0:1 $DEMO_DIR/data/xp3_demo_valid" \
    --seq-length 256 --micro-batch-size 4 --global-batch-size 16 --train-iters "$ITERS" \
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --weight-decay 1e-4 \
    --lr 2e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 20 --clip-grad 1.0 \
    --hidden-dropout 0.0 --attention-dropout 0.0 --norm-target-loss --seed 42 \
    --log-interval 50 --eval-interval 250 --eval-iters 4 --save-interval 250 --num-workers 0 \
    --lm-head-loss chunked --eval-tasks "$DEMO_DIR/eval_tasks" --eval-tasks-interval 250 \
    --tensorboard-dir "$DEMO_DIR/tensorboard/$FAMILY" \
    --deepspeed --deepspeed_config examples/ds_config_demo.json
