#!/usr/bin/env bash
# The CPU demo's finetuning step (`make demo` runs it): a tiny BLOOM (or, with FAMILY=llama, a
# tiny Llama), converted to TP=2, trained on the packed demo corpus by 2 gloo processes. The same
# command runs on GPUs (NCCL) unchanged; see examples/ for the cluster recipes.
#
# Environment: PYTHON (default python3), DEMO_DIR (default demo), FAMILY (default bloom), ITERS
# (default 300).
set -euo pipefail

PYTHON=${PYTHON:-python3}
DEMO_DIR=${DEMO_DIR:-demo}
FAMILY=${FAMILY:-bloom}
ITERS=${ITERS:-300}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}

rm -rf "$DEMO_DIR/checkpoints/${FAMILY}z-tiny" "$DEMO_DIR/tensorboard/$FAMILY"

"$PYTHON" -m torch.distributed.run --nproc-per-node 2 finetune_xp3.py \
    --tensor-model-parallel-size 2 --pipeline-model-parallel-size 1 \
    --load "$DEMO_DIR/checkpoints/${FAMILY}-tiny-tp2" --save "$DEMO_DIR/checkpoints/${FAMILY}z-tiny" \
    --tokenizer-name-or-path "$DEMO_DIR/tokenizer" \
    --train-weighted-split-paths "train: 1 0:1 $DEMO_DIR/data/xp3_demo_train" \
    --valid-weighted-split-paths "valid: 1 0:1 $DEMO_DIR/data/xp3_demo_valid" \
    --seq-length 256 --micro-batch-size 4 --global-batch-size 16 --train-iters "$ITERS" \
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --weight-decay 1e-4 \
    --lr 2e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 20 --clip-grad 1.0 \
    --hidden-dropout 0.0 --attention-dropout 0.0 --norm-target-loss --seed 42 \
    --log-interval 25 --eval-interval 100 --eval-iters 4 --save-interval 100 --num-workers 0 \
    --eval-tasks "$DEMO_DIR/eval_tasks" --eval-tasks-interval 100 \
    --tensorboard-dir "$DEMO_DIR/tensorboard/$FAMILY" \
    --deepspeed --deepspeed_config examples/ds_config_demo.json
