"""A HF fast tokenizer loaded from a local folder or `tokenizer.json`, with the end-of-document
token Megatron calls `eod` (the tokenizer's `eos_token`, `</s>` for BLOOM)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

EOD_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>")


def _special_token(config: dict, name: str) -> str | None:
    token = config.get(name)
    if isinstance(token, dict):
        token = token.get("content")
    return token


class HFTokenizer:
    """Tokenizes without adding special tokens; `eod` is appended explicitly where asked."""

    def __init__(self, name_or_path: str | Path):
        path = Path(name_or_path)
        tokenizer_file = path / "tokenizer.json" if path.is_dir() else path
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{name_or_path}: no tokenizer.json there; pass a local HF tokenizer folder "
                "or a tokenizer.json file (nothing is downloaded)"
            )
        self.path = tokenizer_file
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        folder = tokenizer_file.parent
        eos = pad = None
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                config = json.loads((folder / name).read_text(encoding="utf-8"))
                eos = eos or _special_token(config, "eos_token")
                pad = pad or _special_token(config, "pad_token")
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        eos = eos or next((t for t in EOD_CANDIDATES if t in vocab), None)
        if eos is None or eos not in vocab:
            raise ValueError(
                f"{tokenizer_file}: no end-of-document token found (set eos_token in "
                f"tokenizer_config.json, or use a vocabulary with one of {EOD_CANDIDATES})"
            )
        self.eod = vocab[eos]
        self.pad = vocab[pad] if pad in vocab else self.eod

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)
