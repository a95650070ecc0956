#!/usr/bin/env bash
# Submits the xP3 preprocessing: one array task per language (preprocess_xp3.slurm), then, once
# every task has succeeded, tools/make_data_mixture.py, which writes the training mixture (one
# entry per language, weighted by its preprocessed bytes) and the per-language validation groups
# that the bloomz-*.slurm recipes read. Run from the repository root:
#
#   XP3_DIR=/data/xP3 TOKENIZER=/models/bloom DATA_DIR=/data/xp3-bloom \
#       bash examples/slurm/submit_preprocess_xp3.sh
#
# VALID_FRACTION [0.01]: the last fraction of each language's pairs held out for validation.
set -euo pipefail

REPO_DIR=${REPO_DIR:-$PWD}
PYTHON=${PYTHON:-python3}
: "${XP3_DIR:?set XP3_DIR to the xP3 download (one folder per language)}"
: "${TOKENIZER:?set TOKENIZER to a local tokenizer folder of the model}"
export REPO_DIR PYTHON DATA_DIR=${DATA_DIR:-$REPO_DIR/data/xp3}

# shellcheck source=examples/slurm/xp3_languages.sh
source "$REPO_DIR/examples/slurm/xp3_languages.sh"
prefixes=("${XP3_LANGUAGES[@]/#/$DATA_DIR/xp3_}")

array_job=$(sbatch --parsable --export=ALL --array="0-$((${#XP3_LANGUAGES[@]} - 1))" \
    "$REPO_DIR/examples/slurm/preprocess_xp3.slurm")
mixture=$(printf '%q ' "$PYTHON" "$REPO_DIR/tools/make_data_mixture.py" "${prefixes[@]}" \
    --train-output "$DATA_DIR/xp3_train.txt" --valid-output "$DATA_DIR/xp3_valid.txt" \
    --valid-fraction "${VALID_FRACTION:-0.01}")
mixture_job=$(sbatch --parsable --export=ALL --dependency="afterok:$array_job" --job-name=xp3-mixture \
    --ntasks=1 --time=00:30:00 --output=%x-%j.out --wrap "$mixture")
echo "submitted: preprocessing $array_job (${#XP3_LANGUAGES[@]} languages), mixture $mixture_job"
