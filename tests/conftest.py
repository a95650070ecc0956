"""Session fixtures: the demo corpus and tokenizer (built once per session) and the reference data
written by the original Megatron-DeepSpeed tools. Shared code lives in `helpers/`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.paths import REFERENCE_DIR

from synthetic.corpus import write_jsonl
from synthetic.tokenizer_training import train_bpe_tokenizer

if not torch.cuda.is_available():  # DeepSpeed on CPU, also when pytest runs without `make`
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Triton kernels on CPU tensors run in Triton's interpreter, chosen before Triton is imported
    # (megatron-core imports it): in this process and in the runs it starts
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Skipped where the folder is absent (outside users), a failure where it must be there
    (`XP3_REQUIRE_REFERENCE_DATA=1`, set by `.ci/run`)."""
    if not REFERENCE_DIR.is_dir():
        message = f"reference data not found at {REFERENCE_DIR}"
        if os.environ.get("XP3_REQUIRE_REFERENCE_DATA") == "1":
            pytest.fail(f"{message}, and XP3_REQUIRE_REFERENCE_DATA=1 says it must be there")
        pytest.skip(message)
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo corpus (3,000 training rows, over two 1,024-line batches) and its tokenizer."""
    out = tmp_path_factory.mktemp("demo")
    write_jsonl(out / "train.jsonl", 3000, seed=7)
    write_jsonl(out / "valid.jsonl", 200, seed=8)
    texts = (line for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines())
    train_bpe_tokenizer(texts, out / "tokenizer", vocab_size=1024)
    return out


@pytest.fixture(scope="session")
def demo_data(demo_dir, tmp_path_factory) -> dict[str, Path]:
    """The demo corpus preprocessed as the demo does it, once per session, for every test that
    finetunes on it (its index caches beside it, shared too)."""
    from helpers.finetune_runs import preprocess_demo

    return preprocess_demo(demo_dir, tmp_path_factory.mktemp("demo_data"))
