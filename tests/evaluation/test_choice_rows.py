"""`encode_choices` with and without `prepend_bos`: the BOS first in each example's inputs, counted
in a row's room, and still first where long inputs are cut on the left."""

from __future__ import annotations

from megatron.data.tokenizer import HFTokenizer
from megatron.evaluation.choice_rows import encode_choices
from megatron.evaluation.examples import ChoiceExample

SEQ_LENGTH = 32


def _example(id: str, inputs: str) -> ChoiceExample:
    return ChoiceExample(id, "demo", "en", "p", inputs, ("cat", "dog river"), 0)


def test_bos_stays_first_when_inputs_are_cut(demo_dir):
    tokenizer = HFTokenizer(demo_dir / "tokenizer")
    examples = [_example("short", "Is it a cat?"), _example("long", " ".join(["moon river"] * 40))]
    short, long = (tokenizer.encode(e.inputs) for e in examples)
    choices = [tokenizer.encode(" " + c) for c in examples[0].choices]
    assert len(long) > SEQ_LENGTH
    plain = encode_choices(examples, tokenizer, SEQ_LENGTH)
    with_bos = encode_choices(examples, tokenizer, SEQ_LENGTH, prepend_bos=True)
    assert (plain.tokenization, with_bos.tokenization) == ("no BOS", f"BOS before inputs (id {tokenizer.bos})")
    assert plain.truncated_pairs == with_bos.truncated_pairs == 2
    for pair, choice in enumerate(choices):
        assert plain.inputs[pair].tolist() == short
        assert with_bos.inputs[pair].tolist() == [tokenizer.bos] + short
        room = SEQ_LENGTH + 1 - len(choice)  # input tokens that fit a row beside the choice
        assert plain.inputs[2 + pair].tolist() == long[-room:]
        assert with_bos.inputs[2 + pair].tolist() == [tokenizer.bos] + long[-(room - 1):]
        assert with_bos.choices[2 + pair].tolist() == choice
