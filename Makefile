# The two front-door commands: `make demo` and `make test`. Both set up everything on a fresh
# machine: a virtual environment, torch first (its own spec, so no CUDA wheels are pulled on a
# CPU machine), then this project in editable mode with its pinned dependencies.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
FAMILY ?= bloom
PYTEST_ARGS ?=

# DeepSpeed on CPU: the accelerator, and a project-local cache for its JIT-compiled ops.
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export PYTHONUNBUFFERED := 1

.PHONY: install test demo bench gpu-wheelhouse clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,tensorboard,plot]" --config-settings editable_mode=compat
	touch $@

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/make_demo_data.py --output-dir $(DEMO_DIR)
	$(PY) tools/preprocess_data.py --input $(DEMO_DIR)/xp3_demo_train.jsonl \
		--json-keys inputs targets --prepend-space targets --append-eod targets \
		--tokenizer-name-or-path $(DEMO_DIR)/tokenizer --output-prefix $(DEMO_DIR)/data/xp3_demo_train \
		--workers 2
	$(PY) tools/preprocess_data.py --input $(DEMO_DIR)/xp3_demo_valid.jsonl \
		--json-keys inputs targets --prepend-space targets --append-eod targets \
		--tokenizer-name-or-path $(DEMO_DIR)/tokenizer --output-prefix $(DEMO_DIR)/data/xp3_demo_valid \
		--log-interval 0
	$(PY) tools/make_tiny_model.py --family $(FAMILY) --tokenizer-dir $(DEMO_DIR)/tokenizer \
		--output-dir $(DEMO_DIR)/$(FAMILY)-tiny
	$(PY) tools/convert_checkpoint/hf_to_megatron.py --hf-dir $(DEMO_DIR)/$(FAMILY)-tiny \
		--output-dir $(DEMO_DIR)/checkpoints/$(FAMILY)-tiny
	PYTHON=$(PY) DEMO_DIR=$(DEMO_DIR) FAMILY=$(FAMILY) bash examples/finetune_demo_cpu.sh
	$(PY) tools/convert_checkpoint/megatron_to_hf.py --checkpoint-dir $(DEMO_DIR)/checkpoints/$(FAMILY)z-tiny \
		--output-dir $(DEMO_DIR)/$(FAMILY)z-tiny --tokenizer-dir $(DEMO_DIR)/tokenizer
	$(PY) tools/generate.py --input $(DEMO_DIR)/xp3_demo_valid.jsonl --num-prompts 8 \
		--model before=$(DEMO_DIR)/$(FAMILY)-tiny --model after=$(DEMO_DIR)/$(FAMILY)z-tiny
	$(PY) -m torch.distributed.run --nproc-per-node 2 tools/evaluate.py \
		--checkpoint-dir $(DEMO_DIR)/checkpoints/$(FAMILY)-tiny --tensor-model-parallel-size 2 \
		--tokenizer-name-or-path $(DEMO_DIR)/tokenizer --tasks $(DEMO_DIR)/eval_tasks --seq-length 256 \
		--finetuned-languages $(DEMO_DIR)/finetuned_languages.json --output-json $(DEMO_DIR)/eval/$(FAMILY)-before.json
	$(PY) -m torch.distributed.run --nproc-per-node 2 tools/evaluate.py \
		--checkpoint-dir $(DEMO_DIR)/checkpoints/$(FAMILY)z-tiny --tensor-model-parallel-size 2 \
		--tokenizer-name-or-path $(DEMO_DIR)/tokenizer --tasks $(DEMO_DIR)/eval_tasks --seq-length 256 \
		--finetuned-languages $(DEMO_DIR)/finetuned_languages.json \
		--baseline $(DEMO_DIR)/eval/$(FAMILY)-before.json --output-json $(DEMO_DIR)/eval/$(FAMILY)-after.json \
		--per-example-output $(DEMO_DIR)/eval/$(FAMILY)-after_examples.jsonl \
		--plot $(DEMO_DIR)/eval/$(FAMILY)-accuracy.png

bench: $(STAMP)
	$(PY) bench/preprocess.py

# The wheels the GPU machine of bench/gpu_check.sh lacks (Python 3.12, no registry there).
gpu-wheelhouse: $(STAMP)
	$(PY) bench/gpu_wheelhouse.py --output-dir .gpu_wheelhouse

clean:
	rm -rf build $(DEMO_DIR) .pytest_cache megatron/data/_cpp*.so
