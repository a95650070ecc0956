#!/usr/bin/env python3
"""Benchmark of `tools/preprocess_data.py` against Megatron's own way of preprocessing.

Baseline (what Megatron-LM / Megatron-DeepSpeed's tool does): a `multiprocessing.Pool` with
`imap(encode, lines, chunksize=32)`, each worker parsing one json line and calling the HF
tokenizer (transformers, fast) once per document, the main process appending every document to
megatron-core's `IndexedDatasetBuilder`. Both run as child processes of this one, on the same
generated multilingual corpus, with the same worker count; peak RSS is summed over each child's
whole process tree. The two outputs are compared byte for byte.

    python bench/preprocess.py --megabytes 100 --workers 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
KEYS = ("inputs", "targets")


def make_corpus(folder: Path, megabytes: int, vocab_size: int) -> tuple[Path, Path]:
    """A multilingual xP3-like jsonl of at least `megabytes` MB and a BPE tokenizer trained on it."""
    from synthetic.corpus import generate_rows
    from synthetic.tokenizer_training import train_bpe_tokenizer

    corpus = folder / f"corpus_{megabytes}mb.jsonl"
    tokenizer = folder / f"tokenizer_{vocab_size}"
    if not corpus.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = corpus.with_suffix(".tmp")
        written = 0
        with open(tmp, "w", encoding="utf-8") as out:
            for row in generate_rows(10**9, seed=0, median_words=40):
                line = json.dumps(row, ensure_ascii=False) + "\n"
                out.write(line)
                written += len(line.encode("utf-8"))
                if written >= megabytes * 10**6:
                    break
        tmp.rename(corpus)
    if not tokenizer.exists():
        rows = generate_rows(20000, seed=1, median_words=40)
        texts = itertools.chain.from_iterable((r["inputs"], " " + r["targets"]) for r in rows)
        train_bpe_tokenizer(texts, tokenizer, vocab_size=vocab_size)
    return corpus, tokenizer


# ---- the baseline, run as a child process: Megatron's preprocessing loop ----

class _MegatronEncoder:
    def initializer(self, tokenizer_dir: str) -> None:
        from transformers import AutoTokenizer

        _MegatronEncoder.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def encode(self, json_line: str):
        data = json.loads(json_line)
        ids = {}
        for key in KEYS:
            text = " " + data[key] if key == "targets" else data[key]
            doc = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if key == "targets":
                doc.append(self.tokenizer.eos_token_id)
            ids[key] = doc
        return ids, len(json_line)


def run_baseline(corpus: str, tokenizer_dir: str, prefix: str, workers: int) -> None:
    import multiprocessing

    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron.data.indexed_dataset import best_fitting_dtype
    from megatron.data.tokenizer import HFTokenizer

    dtype = best_fitting_dtype(HFTokenizer(tokenizer_dir).vocab_size)
    encoder = _MegatronEncoder()
    builders = {key: IndexedDatasetBuilder(f"{prefix}_{key}_document.bin", dtype=dtype) for key in KEYS}
    with open(corpus, encoding="utf-8") as lines, multiprocessing.Pool(
        workers, initializer=encoder.initializer, initargs=(tokenizer_dir,)
    ) as pool:
        for doc, _ in pool.imap(encoder.encode, lines, 32):
            for key, ids in doc.items():
                builders[key].add_document(torch.IntTensor(ids), [len(ids)])
    for key, builder in builders.items():
        builder.finalize(f"{prefix}_{key}_document.idx")


# ---- measurement ----

def measure(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of the whole process tree (bytes), and stdout of `command`."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    stdout, _ = process.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return seconds, peak, stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=16384)
    parser.add_argument("--work-dir", default=str(REPO / "build" / "bench_preprocess"))
    parser.add_argument("--baseline-child", nargs=3, metavar=("CORPUS", "TOKENIZER", "PREFIX"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        run_baseline(*args.baseline_child, workers=args.workers)
        return

    from megatron.data.indexed_dataset import IndexedDataset

    work = Path(args.work_dir)
    corpus, tokenizer = make_corpus(work, args.megabytes, args.vocab_size)
    size = corpus.stat().st_size
    ours_cmd = [
        sys.executable, "tools/preprocess_data.py", "--input", str(corpus), "--json-keys", *KEYS,
        "--prepend-space", "targets", "--append-eod", "targets", "--tokenizer-name-or-path",
        str(tokenizer), "--output-prefix", str(work / "ours"), "--workers", str(args.workers),
        "--log-interval", "0",
    ]
    base_cmd = [sys.executable, __file__, "--workers", str(args.workers), "--baseline-child",
                str(corpus), str(tokenizer), str(work / "baseline")]
    base_s, base_rss, _ = measure(base_cmd)
    ours_s, ours_rss, ours_out = measure(ours_cmd)
    writer_s = float(re.search(r"writer ([\d.]+) s", ours_out).group(1))

    docs = len(IndexedDataset(work / "ours_inputs_document"))
    tokens = sum(IndexedDataset(work / f"ours_{k}_document").num_tokens for k in KEYS)
    identical = all(
        (work / f"ours_{k}_document{s}").read_bytes() == (work / f"baseline_{k}_document{s}").read_bytes()
        for k in KEYS for s in (".bin", ".idx")
    )
    print(f"corpus: {size / 1e6:.1f} MB, {docs:,} documents, {tokens:,} tokens; "
          f"vocab {args.vocab_size}; {args.workers} workers; {psutil.cpu_count()} CPUs")
    print(f"{'':<34}{'docs/s':>10}{'tokens/s':>12}{'MB/s':>8}{'peak RSS':>11}")
    for name, seconds, rss in (("baseline (Megatron Pool.imap + mcore)", base_s, base_rss),
                               ("ours (tools/preprocess_data.py)", ours_s, ours_rss)):
        print(f"{name:<34}{docs / seconds:>10,.0f}{tokens / seconds:>12,.0f}"
              f"{size / seconds / 1e6:>8.2f}{rss / 2**20:>8,.0f} MiB")
    print(f"speed-up: {base_s / ours_s:.2f}x; writer share of our time: {100 * writer_s / ours_s:.1f}%; "
          f"outputs byte-identical: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
