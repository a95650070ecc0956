#!/usr/bin/env bash
# The prepared GPU check: one command for a short GPU loan (the `device` tool's machine: torch and
# Triton there, Python 3.12, no package registry). It installs the carried wheels (`make
# gpu-wheelhouse`, folder .gpu_wheelhouse) beside the machine's own torch, compiles this project's
# C++ extension there, then runs bench/gpu_check.py: the GPU tests, a 560m-shaped finetune in bf16
# and fp16, the step benchmarks (LoRA r16 against the full finetune among their versions) and the
# LM-head one, each step under its own time limit, the report in $OUT/gpu_report.json and
# $OUT/gpu_report.md.
#
#   bash bench/gpu_check.sh [--budget SECONDS]      # on the GPU machine (device run: carry .gpu_wheelhouse,
#                                                   #  timeout_s = budget + 60; default budget 450)
#   bash bench/gpu_check.sh --rehearse              # here, on CPU: tiny shapes, this machine's .venv
#
# The wheels go to a --target folder on PYTHONPATH rather than into a venv: the machine's python3
# is itself a venv (/opt/torch/.venv), and a venv made from it with --system-site-packages would
# see the base interpreter's packages, not that torch.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
started=$(date +%s)

rehearse=0
args=()
for arg in "$@"; do
    if [ "$arg" = --rehearse ]; then rehearse=1; else args+=("$arg"); fi
done
OUT=${OUT:-$PWD/gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$WORK/torch_extensions}

if [ "$rehearse" = 1 ]; then
    PY=${PYTHON:-.venv/bin/python}
    export DS_ACCELERATOR=cpu TRITON_INTERPRET=1
    exec "$PY" bench/gpu_check.py --rehearse --out "$OUT" --work "$WORK" --started-at "$started" "${args[@]}"
fi

PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELHOUSE:-.gpu_wheelhouse}
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: no wheels in $WHEELS: run 'make gpu-wheelhouse' where pip works, and carry that folder" >&2
    exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$WHEELS"/*.whl || { echo "error: installing the wheels of $WHEELS failed" >&2; exit 2; }
export PYTHONPATH="$WORK/site:$PWD" DS_ACCELERATOR=cuda
if ! "$PY" setup.py -q build_ext --inplace -j 8 >"$WORK/build.log" 2>&1; then
    cp "$WORK/build.log" "$OUT/build.log"
    echo "error: compiling the C++ extension failed (see build.log)" >&2; tail -20 "$WORK/build.log" >&2; exit 2
fi
# everything the steps import, at once: a missing piece fails here in seconds, not in every step
"$PY" -c "import deepspeed, transformers, megatron.core, megatron.data._cpp, megatron.kernels.flash_attention, \
megatron.train.engine; print('imports: deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)" \
    || { echo "error: the environment does not import (see above)" >&2; exit 2; }
exec "$PY" bench/gpu_check.py --out "$OUT" --work "$WORK" --started-at "$started" "${args[@]}"
