"""A HF fast tokenizer loaded from a local folder or `tokenizer.json`, with the special token ids
the data need: `eod` (the end-of-document token, the tokenizer's `eos_token`: `</s>` for BLOOM),
`bos` (its beginning-of-sequence token, which `--prepend-bos` puts first, e.g. `<|begin_of_text|>`;
None where it has none) and `pad` (the row filler)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

EOD_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>")
# only among the special tokens: `<s>` may be an ordinary token of a byte-level vocabulary, and
# `<|endoftext|>` ends documents, it does not begin them
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>")


def _special_token(config: dict, name: str) -> str | None:
    token = config.get(name)
    if isinstance(token, dict):
        token = token.get("content")
    return token


class HFTokenizer:
    """Tokenizes without adding special tokens; `eod` and `bos` are added explicitly where asked.

    `eod` and `bos` are the `eos_token` and `bos_token` that `tokenizer_config.json` or
    `special_tokens_map.json` names, else a well-known token (`EOD_CANDIDATES`; for `bos`, a
    special token among `BOS_CANDIDATES`). `pad` is its `pad_token`; a tokenizer without one
    (many name none) pads with `eod`: padding is masked out of attention and
    loss, so the pad id is only a filler."""

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
        eos = bos = pad = None
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                config = json.loads((folder / name).read_text(encoding="utf-8"))
                eos = eos or _special_token(config, "eos_token")
                bos = bos or _special_token(config, "bos_token")
                pad = pad or _special_token(config, "pad_token")
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        eos = eos or next((t for t in EOD_CANDIDATES if t in vocab), None)
        if eos is None or eos not in vocab:
            raise ValueError(
                f"{tokenizer_file}: no end-of-document token found (set eos_token in "
                f"tokenizer_config.json, or use a vocabulary with one of {EOD_CANDIDATES})"
            )
        special = {t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special}
        bos = bos or next((t for t in BOS_CANDIDATES if t in special), None)
        self.eod = vocab[eos]
        self.bos = vocab.get(bos)
        self.pad = vocab[pad] if pad in vocab else self.eod

    def require_bos(self, purpose: str) -> int:
        """The BOS id, or a ValueError naming this tokenizer's file and what the token was for."""
        if self.bos is None:
            raise ValueError(
                f"{self.path}: no beginning-of-sequence token in this tokenizer's vocabulary for "
                f"{purpose} (looked for: the bos_token of tokenizer_config.json or "
                f"special_tokens_map.json, else one of {BOS_CANDIDATES} among its special tokens)"
            )
        return self.bos

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)
