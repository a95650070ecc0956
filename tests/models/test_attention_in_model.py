"""Attention inside our BLOOM (one process, TP=1, eval): the flex backend (FlexAttention, forward
only on CPU) gives the reference backend's logits on a packed row, causal and prefix LM; and what
a position sees: with --prefix-lm an input token sees its pair's later inputs, never its targets
or another pair; without it, nothing later. The flex backend also for the Llama family (grouped
K/V, no ALiBi)."""

from __future__ import annotations

import pytest
import torch
from helpers.bloom_workers import packed_batch
from helpers.distributed import free_port, gloo_world
from helpers.tiny import sharpen_attention, tiny_config

from megatron.models.bloom.model import BloomModel
from megatron.models.common.parallel_config import model_parallel_config
from megatron.train.distributed import initialize_parallel

# packed_batch's second pair: positions 7..15, inputs 7..13, targets 14 and 15
PAIR, INPUTS, TARGETS = range(7, 16), range(7, 14), (14, 15)


@pytest.fixture(scope="module", autouse=True)
def one_process_world():
    with gloo_world(0, 1, free_port()):
        initialize_parallel(1, 1)
        yield


def logits(backend: str, prefix_lm: bool, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """The logits `[seq, vocab]` of a tiny model (the same weights for every backend) on
    packed_batch's row, or on that row with other `tokens`."""
    model = BloomModel(tiny_config(attention_backend=backend, prefix_lm=prefix_lm), model_parallel_config(),
                       init_seed=5).eval()
    sharpen_attention(model)
    batch, _ = packed_batch()
    tokens = batch["tokens"] if tokens is None else tokens
    with torch.no_grad():
        return model(tokens, batch["segment_ids"], batch["is_inputs"])[0]


def changed_at(position: int) -> torch.Tensor:
    """packed_batch's tokens with another token at `position`."""
    tokens = packed_batch()[0]["tokens"].clone()
    tokens[0, position] = 4 if tokens[0, position] != 4 else 5
    return tokens


def moved(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
def test_flex_backend_gives_the_reference_logits(prefix_lm):
    """FlexAttention's block mask and ALiBi score modifier give the reference's logits at every
    position of a packed row (padding included), on a row where --prefix-lm changes them."""
    flex, reference = logits("flex", prefix_lm), logits("reference", prefix_lm)
    assert moved(reference, logits("reference", not prefix_lm)) > 1e-2  # prefix LM matters on this row
    torch.testing.assert_close(flex, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_prefix_lm_inputs_see_later_inputs_of_their_pair_only(backend):
    """With --prefix-lm, changing the second pair's input 12 moves the logits of its inputs 7..11;
    changing that pair's targets leaves its input positions bit-identical, and changing a token
    of another pair leaves the whole pair bit-identical."""
    plain = logits(backend, prefix_lm=True)
    later_input = logits(backend, True, changed_at(12))
    for position in INPUTS[:5]:  # 7..11, before the changed input 12
        assert moved(later_input[position], plain[position]) > 1e-3, position
    for changed in (*TARGETS, 3, 18):  # this pair's targets; a token of the first and of the third pair
        assert torch.equal(logits(backend, True, changed_at(changed))[list(INPUTS)], plain[list(INPUTS)]), changed
    for changed in (3, 18):
        assert torch.equal(logits(backend, True, changed_at(changed))[list(PAIR)], plain[list(PAIR)]), changed


@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_without_prefix_lm_no_position_sees_a_later_token(backend):
    """Without --prefix-lm (`is_inputs` passed all the same), changing a token leaves the
    positions before it bit-identical and moves its own."""
    plain = logits(backend, prefix_lm=False)
    for changed in (8, 12, 15):
        later = logits(backend, False, changed_at(changed))
        assert torch.equal(later[7:changed], plain[7:changed]), changed
        assert moved(later[changed], plain[changed]) > 1e-3, changed


def llama_logits(backend: str, prefix_lm: bool) -> torch.Tensor:
    """The same for a tiny Llama-family model: 4 heads over 2 KV heads, RoPE, no ALiBi."""
    from megatron.models.llama.config import LlamaModelConfig
    from megatron.models.llama.model import LlamaModel

    config = LlamaModelConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                              ffn_hidden_size=48, rope_theta=100.0, attention_backend=backend, prefix_lm=prefix_lm)
    model = LlamaModel(config, model_parallel_config(), init_seed=5).eval()
    sharpen_attention(model)
    batch, _ = packed_batch()
    with torch.no_grad():
        return model(batch["tokens"], batch["segment_ids"], batch["is_inputs"])[0]


@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
def test_flex_backend_gives_the_reference_logits_for_grouped_query_attention(prefix_lm):
    """FlexAttention with `enable_gqa`, no score modifier and the segment block mask gives the
    reference's logits for the Llama family."""
    flex, reference = llama_logits("flex", prefix_lm), llama_logits("reference", prefix_lm)
    assert moved(reference, llama_logits("reference", not prefix_lm)) > 1e-2
    torch.testing.assert_close(flex, reference, rtol=1e-4, atol=1e-5)
