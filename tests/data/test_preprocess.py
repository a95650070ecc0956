"""`tools/preprocess_data.py` end to end: xP3 inputs/targets, per-key flags, worker-count
independence, input forms, and every kind of bad row (an error naming file and line, or a count
with --skip-bad-rows) without partial output; the special tokens of tokenizers of other families
(Llama 3, Qwen2) and `--prepend-bos`."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.paths import run_tool
from tokenizers import Tokenizer

from megatron.data.indexed_dataset import IndexedDataset
from megatron.data.preprocess import KeySpec, PreprocessConfig
from megatron.data.preprocess import preprocess as run_preprocess
from megatron.data.tokenizer import HFTokenizer
from synthetic.tokenizer_training import train_bpe_tokenizer

FAMILY_SPECIAL_TOKENS = {
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},  # no pad token
    "qwen2": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},  # no BOS
}


def preprocess(demo_dir: Path, inputs, prefix: Path, *extra: str, check: bool = True, tokenizer: Path | None = None):
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return run_tool(
        "preprocess_data.py", "--input", *inputs, "--json-keys", "inputs", "targets",
        "--prepend-space", "targets", "--append-eod", "targets",
        "--tokenizer-name-or-path", tokenizer or demo_dir / "tokenizer", "--output-prefix", prefix,
        "--log-interval", "1000", *extra, check=check,
    )


@pytest.fixture(scope="module")
def family_tokenizers(demo_dir, tmp_path_factory) -> dict[str, Path]:
    """Tokenizer folders trained on the demo corpus with the special tokens of Llama 3 and Qwen2."""
    folder = tmp_path_factory.mktemp("families")
    texts = (demo_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return {name: train_bpe_tokenizer(texts, folder / name, vocab_size=1024, special_tokens=special)
            for name, special in FAMILY_SPECIAL_TOKENS.items()}


def read_pairs(prefix: Path) -> tuple[IndexedDataset, IndexedDataset]:
    return IndexedDataset(f"{prefix}_inputs_document"), IndexedDataset(f"{prefix}_targets_document")


def outputs_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_xp3_inputs_and_targets(demo_dir, tmp_path):
    result = preprocess(demo_dir, demo_dir / "train.jsonl", tmp_path / "xp3", "--workers", "2")
    assert "documents: 3,000" in result.stdout
    assert "processed 1,024 documents" in result.stderr  # the progress line
    inputs, targets = read_pairs(tmp_path / "xp3")
    tokenizer = HFTokenizer(demo_dir / "tokenizer")
    rows = [json.loads(line) for line in (demo_dir / "train.jsonl").read_text().splitlines()]
    assert len(inputs) == len(targets) == len(rows) == 3000
    assert inputs.dtype == np.uint16  # vocabulary of 1,024
    for i in (0, 1, 1500, 2999):
        assert inputs[i].tolist() == tokenizer.encode(rows[i]["inputs"])
        assert targets[i].tolist() == tokenizer.encode(" " + rows[i]["targets"]) + [tokenizer.eod]
    assert tokenizer.decode(targets[0]) == " " + rows[0]["targets"] + "</s>"


def test_output_is_identical_for_any_worker_count(demo_dir, tmp_path):
    """The 3,000 demo rows in 60 batches of 50 lines (`batch_lines`; the tool always uses 1,024
    and has no flag for it), so several workers have batches in flight at once: 1, 2 and 7
    workers write the same bytes, and every row holds what `tokenizers` itself gives for it,
    inputs as they are, targets with a leading space and BLOOM's `</s>` (--prepend-space targets
    --append-eod targets)."""
    for workers in (1, 2, 7):
        config = PreprocessConfig(
            inputs=[str(demo_dir / "train.jsonl")],
            keys=[KeySpec("inputs"), KeySpec("targets", prepend_space=True, append_eod=True)],
            tokenizer=str(demo_dir / "tokenizer"), output_prefix=str(tmp_path / f"w{workers}"),
            workers=workers, log_interval=0, batch_lines=50,
        )
        assert run_preprocess(config).documents == 3000
    for key in ("inputs", "targets"):
        for suffix in (".bin", ".idx"):
            one = (tmp_path / f"w1_{key}_document{suffix}").read_bytes()
            for workers in (2, 7):
                assert (tmp_path / f"w{workers}_{key}_document{suffix}").read_bytes() == one, (key, suffix, workers)
    tokenizer = Tokenizer.from_file(str(demo_dir / "tokenizer" / "tokenizer.json"))
    eod = tokenizer.token_to_id("</s>")
    rows = [json.loads(line) for line in (demo_dir / "train.jsonl").read_text().splitlines()]
    inputs, targets = read_pairs(tmp_path / "w7")
    assert len(inputs) == len(targets) == len(rows)
    expected_inputs = tokenizer.encode_batch([row["inputs"] for row in rows], add_special_tokens=False)
    expected_targets = tokenizer.encode_batch([" " + row["targets"] for row in rows], add_special_tokens=False)
    for i, (row_inputs, row_targets) in enumerate(zip(expected_inputs, expected_targets)):
        assert inputs[i].tolist() == row_inputs.ids, i
        assert targets[i].tolist() == row_targets.ids + [eod], i


def test_gzip_folder_and_glob_inputs_give_the_same_output(demo_dir, tmp_path):
    lines = (demo_dir / "train.jsonl").read_bytes().splitlines(keepends=True)
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "part-0.jsonl").write_bytes(b"".join(lines[:1000]))
    with gzip.open(folder / "part-1.jsonl.gz", "wb") as shard:
        shard.write(b"".join(lines[1000:]))
    preprocess(demo_dir, demo_dir / "train.jsonl", tmp_path / "plain")
    preprocess(demo_dir, folder, tmp_path / "folder")
    preprocess(demo_dir, str(folder / "part-*"), tmp_path / "glob")
    for prefix in ("folder", "glob"):
        for key in ("inputs", "targets"):
            for suffix in (".bin", ".idx"):
                assert (tmp_path / f"{prefix}_{key}_document{suffix}").read_bytes() == (
                    tmp_path / f"plain_{key}_document{suffix}"
                ).read_bytes()


def test_plain_text_key_with_eod_everywhere(demo_dir, tmp_path):
    corpus = tmp_path / "text.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(5)))
    run_tool("preprocess_data.py", "--input", corpus, "--append-eod",
             "--tokenizer-name-or-path", demo_dir / "tokenizer" / "tokenizer.json",
             "--output-prefix", tmp_path / "plain")
    text = IndexedDataset(tmp_path / "plain_text_document")
    tokenizer = HFTokenizer(demo_dir / "tokenizer")
    assert len(text) == 5
    assert text[3].tolist() == tokenizer.encode("document number 3") + [tokenizer.eod]


def test_bos_and_pad_of_each_family(demo_dir, family_tokenizers, tmp_path):
    """BOS from the tokenizer config, else a well-known special token (a bare tokenizer.json);
    none for Qwen2, whose `<|endoftext|>` is no BOS; the end token pads where there is no pad."""
    bloom = HFTokenizer(demo_dir / "tokenizer")
    assert (bloom.bos, bloom.eod, bloom.pad) == (1, 2, 3)
    llama = HFTokenizer(family_tokenizers["llama3"])
    assert (llama.bos, llama.eod, llama.pad) == (0, 1, 1)
    bare = tmp_path / "tokenizer.json"
    shutil.copy(family_tokenizers["llama3"] / "tokenizer.json", bare)
    bare_llama = HFTokenizer(bare)
    assert (bare_llama.bos, bare_llama.eod) == (0, 1)
    qwen = HFTokenizer(family_tokenizers["qwen2"])
    assert (qwen.bos, qwen.eod, qwen.pad) == (None, 0, 0)


def test_prepend_bos_on_inputs_only(demo_dir, family_tokenizers, tmp_path):
    """Llama 3's xP3: the BOS first in every input document; targets as without the flag."""
    folder = family_tokenizers["llama3"]
    preprocess(demo_dir, demo_dir / "valid.jsonl", tmp_path / "bos", "--prepend-bos", "inputs", tokenizer=folder)
    tokenizer = HFTokenizer(folder)
    rows = [json.loads(line) for line in (demo_dir / "valid.jsonl").read_text().splitlines()]
    inputs, targets = read_pairs(tmp_path / "bos")
    assert len(inputs) == len(targets) == len(rows) == 200
    for i in (0, 1, 199):
        assert inputs[i].tolist() == [tokenizer.bos] + tokenizer.encode(rows[i]["inputs"])
        assert targets[i].tolist() == tokenizer.encode(" " + rows[i]["targets"]) + [tokenizer.eod]


def test_prepend_bos_without_a_bos_is_refused_before_any_output(demo_dir, family_tokenizers, tmp_path):
    out = tmp_path / "out"
    result = preprocess(demo_dir, demo_dir / "valid.jsonl", out / "xp3", "--prepend-bos",
                        tokenizer=family_tokenizers["qwen2"], check=False)
    assert result.returncode == 1
    assert (f"{family_tokenizers['qwen2'] / 'tokenizer.json'}: no beginning-of-sequence token in this "
            "tokenizer's vocabulary for --prepend-bos inputs targets") in result.stderr
    assert "no output written" in result.stderr
    assert not out.exists() or outputs_of(out) == []


BAD_ROWS = {
    "malformed JSON": b'{"inputs": "a", "targets": \n',
    "missing key": b'{"inputs": "only inputs here"}\n',
    "non-string value": b'{"inputs": "a question", "targets": 42}\n',
    "invalid UTF-8": b'{"inputs": "caf\xe9", "targets": "b"}\n',
    "empty field": b'{"inputs": "a question", "targets": ""}\n',
}


@pytest.fixture
def corpus_with_bad_row(demo_dir, tmp_path, request):
    """The demo corpus with one bad row inserted at line 1,500 (in the second batch)."""
    lines = (demo_dir / "train.jsonl").read_bytes().splitlines(keepends=True)
    path = tmp_path / "input" / "corrupt.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"".join(lines[:1499] + [BAD_ROWS[request.param]] + lines[1499:]))
    return path


@pytest.mark.parametrize("corpus_with_bad_row", list(BAD_ROWS), indirect=True)
def test_bad_row_stops_with_file_and_line_and_leaves_no_output(demo_dir, tmp_path, corpus_with_bad_row, request):
    reason = request.node.callspec.params["corpus_with_bad_row"]
    out = tmp_path / "out"
    result = preprocess(demo_dir, corpus_with_bad_row, out / "xp3", "--workers", "2", check=False)
    assert result.returncode == 1
    assert f"{corpus_with_bad_row}:1500: {reason}" in result.stderr
    assert not out.exists() or outputs_of(out) == []


@pytest.mark.parametrize("corpus_with_bad_row", list(BAD_ROWS), indirect=True)
def test_skip_bad_rows_counts_them_and_keeps_pairs_aligned(demo_dir, tmp_path, corpus_with_bad_row, request):
    reason = request.node.callspec.params["corpus_with_bad_row"]
    result = preprocess(demo_dir, corpus_with_bad_row, tmp_path / "xp3", "--skip-bad-rows")
    assert "documents: 3,000" in result.stdout
    assert f"{reason}: 1" in result.stdout
    inputs, targets = read_pairs(tmp_path / "xp3")
    assert len(inputs) == len(targets) == 3000
    reference = tmp_path / "clean"
    preprocess(demo_dir, demo_dir / "train.jsonl", reference)
    for key in ("inputs", "targets"):
        assert (tmp_path / f"xp3_{key}_document.bin").read_bytes() == (
            tmp_path / f"clean_{key}_document.bin"
        ).read_bytes()


def test_failed_run_keeps_the_previous_complete_output(demo_dir, tmp_path):
    preprocess(demo_dir, demo_dir / "valid.jsonl", tmp_path / "xp3")
    before = {name: (tmp_path / name).read_bytes() for name in outputs_of(tmp_path)}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes((demo_dir / "train.jsonl").read_bytes() + BAD_ROWS["missing key"])
    result = preprocess(demo_dir, bad, tmp_path / "xp3", check=False)
    assert result.returncode == 1 and f"{bad}:3001: missing key" in result.stderr
    bad.unlink()
    assert {name: (tmp_path / name).read_bytes() for name in outputs_of(tmp_path)} == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--append-eod", "labels"], "--append-eod names ['labels']"),
        (["--prepend-bos", "inputs", "labels"], "--prepend-bos names ['labels']"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_flags_are_named(demo_dir, tmp_path, args, message):
    result = preprocess(demo_dir, demo_dir / "valid.jsonl", tmp_path / "x", *args, check=False)
    assert result.returncode == 2 and message in result.stderr


def test_missing_input_and_tokenizer_are_named(demo_dir, tmp_path):
    result = preprocess(demo_dir, tmp_path / "nope.jsonl", tmp_path / "x", check=False)
    assert result.returncode == 1 and "nope.jsonl: no such file" in result.stderr
    shutil.copytree(demo_dir / "tokenizer", tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").unlink()
    result = run_tool("preprocess_data.py", "--input", demo_dir / "valid.jsonl",
                      "--tokenizer-name-or-path", tmp_path / "tok", "--output-prefix", tmp_path / "x",
                      check=False)
    assert result.returncode == 1 and "no tokenizer.json" in result.stderr
