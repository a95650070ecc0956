"""The demo's own scripts on tiny settings: `make_demo_data.py` (jsonl splits, the languages each
task is finetuned in, and a tokenizer),
`make_tiny_model.py` (a random HF BLOOM over that tokenizer) and `generate.py` (each prompt, its
expected target and every model's generation)."""

from __future__ import annotations

import ast
import json

from helpers.paths import tool_main
from transformers import AutoTokenizer, BloomForCausalLM

from megatron.checkpoint.conversion import TOKENIZER_FILES
from synthetic.corpus import CROSSLINGUAL, LANGUAGES, TASKS

MODELS = ("before", "after")


def test_demo_scripts_write_and_print_what_the_demo_uses(tmp_path, capsys):
    """Both splits with their row counts and a tokenizer transformers loads (BLOOM's special ids);
    BLOOM folders transformers loads, of the asked shape, with the tokenizer's files; and for each
    prompt its header, prompt and expected lines, then one generation line per model."""
    demo = tmp_path / "demo"
    tool_main("make_demo_data.py")(["--output-dir", str(demo), "--train-rows", "40", "--valid-rows", "3",
                                    "--vocab-size", "300"])
    rows = {split: [json.loads(line) for line in (demo / f"xp3_demo_{split}.jsonl").read_text().splitlines()]
            for split in ("train", "valid")}
    assert [len(rows["train"]), len(rows["valid"])] == [40, 3]
    assert all(row["inputs"].strip() and row["targets"].strip() for split in rows.values() for row in split)
    tokenizer = AutoTokenizer.from_pretrained(demo / "tokenizer")
    assert len(tokenizer) == 300 and tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 3
    assert f"wrote {demo / 'xp3_demo_train.jsonl'}" in capsys.readouterr().out
    finetuned = json.loads((demo / "finetuned_languages.json").read_text())
    assert finetuned["demo_compare"] == [lang for lang in LANGUAGES if lang not in CROSSLINGUAL["compare"]]
    assert finetuned["demo_copy"] == list(LANGUAGES) and set(finetuned) == {f"demo_{task}" for task in TASKS}
    assert {row["language"] for row in rows["train"] if row["task"] == "compare"} <= set(finetuned["demo_compare"])

    for seed, name in enumerate(MODELS):
        tool_main("make_tiny_model.py")(["--tokenizer-dir", str(demo / "tokenizer"), "--output-dir",
                                         str(tmp_path / name), "--hidden-size", "16", "--num-layers", "1",
                                         "--num-attention-heads", "2", "--seed", str(seed)])
        config = BloomForCausalLM.from_pretrained(tmp_path / name).config
        assert (config.vocab_size, config.hidden_size, config.n_layer, config.n_head) == (300, 16, 1, 2)
        assert (config.eos_token_id, config.pad_token_id) == (2, 3)
        copied = [f for f in TOKENIZER_FILES if (demo / "tokenizer" / f).is_file()]
        assert copied and all((tmp_path / name / f).is_file()
                              and (tmp_path / name / f).read_bytes() == (demo / "tokenizer" / f).read_bytes()
                              for f in copied)
    assert f"wrote {tmp_path / MODELS[-1]}: a random 1-layer BLOOM, hidden 16" in capsys.readouterr().out

    tool_main("generate.py")(["--input", str(demo / "xp3_demo_valid.jsonl"), "--num-prompts", "2",
                              "--max-new-tokens", "3", *(f"--model={name}={tmp_path / name}" for name in MODELS)])
    printed = capsys.readouterr().out.splitlines()
    per_prompt = 3 + len(MODELS)
    assert len(printed) == 2 * per_prompt
    for i, row in enumerate(rows["valid"][:2]):
        header, prompt, expected, *generated = printed[i * per_prompt:(i + 1) * per_prompt]
        assert header == f"--- {row['task']} ({row['language']})"
        assert prompt == f"  prompt:   {row['inputs']!r}"
        assert expected == f"  expected: {row['targets']!r}"
        for name, line in zip(MODELS, generated):
            label, text = line.split(maxsplit=1)
            assert label == f"{name}:" and isinstance(ast.literal_eval(text), str)


def test_a_tiny_llama_for_the_demo_and_its_generations_after_a_bos(tmp_path, capsys):
    """`make_tiny_model.py --family llama`: a `LlamaForCausalLM` folder (grouped-query attention,
    untied head, llama3 rope scaling) over the demo tokenizer; `generate.py --prepend-bos` prints a
    generation per prompt."""
    from transformers import LlamaForCausalLM

    demo = tmp_path / "demo"
    tool_main("make_demo_data.py")(["--output-dir", str(demo), "--train-rows", "40", "--valid-rows", "2",
                                    "--vocab-size", "300"])
    tool_main("make_tiny_model.py")(["--family", "llama", "--tokenizer-dir", str(demo / "tokenizer"), "--output-dir",
                                     str(tmp_path / "llama"), "--hidden-size", "32", "--num-layers", "1",
                                     "--num-attention-heads", "4", "--num-key-value-heads", "2"])
    config = LlamaForCausalLM.from_pretrained(tmp_path / "llama").config
    assert (config.vocab_size, config.num_key_value_heads, config.tie_word_embeddings) == (300, 2, False)
    assert config.rope_parameters["rope_type"] == "llama3"
    capsys.readouterr()
    tool_main("generate.py")(["--input", str(demo / "xp3_demo_valid.jsonl"), "--num-prompts", "2",
                              "--max-new-tokens", "2", "--prepend-bos", f"--model=llama={tmp_path / 'llama'}"])
    assert sum(line.startswith("  llama:") for line in capsys.readouterr().out.splitlines()) == 2
