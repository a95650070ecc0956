"""Trains a small byte-level BPE tokenizer with HF `tokenizers` and saves it as a HF tokenizer
folder laid out like BLOOM's (`<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3) or with another family's
special tokens, so the demo and the tests need no download. `transformers.AutoTokenizer` and
`megatron.data.tokenizer` both load it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from megatron.utils.atomic_files import atomic_folder

BLOOM_SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2048,
                        special_tokens: dict[str, str] = BLOOM_SPECIAL_TOKENS) -> Path:
    """Train on `texts` and write `tokenizer.json`, `tokenizer_config.json` and
    `special_tokens_map.json` into `out_dir` (replaced whole, atomically). `special_tokens` maps
    roles (`bos_token`, `eos_token`, ...) to tokens, which take the first ids in that order; a
    role left out is absent from the folder (Llama 3: no pad token; Qwen2: no BOS)."""
    tokenizer = Tokenizer(models.BPE(unk_token=special_tokens.get("unk_token")))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(dict.fromkeys(special_tokens.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)

    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:
        tokenizer.save(str(tmp / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000,
            "padding_side": "left",
            "add_prefix_space": False,
            **special_tokens,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2) + "\n")
    return out_dir
