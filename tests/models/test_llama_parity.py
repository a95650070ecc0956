"""Our Llama family against transformers' `LlamaForCausalLM` (untied, `llama3` rope scaling),
`Qwen2ForCausalLM` (tied, q/k/v bias), `MistralForCausalLM` and a Llama with `attention_bias` and
`mlp_bias` (eager attention, fp32), all with
grouped-query attention (4 heads over 2 KV heads): logits at TP=1 and TP=2 (two gloo processes), a
packed row of three pairs against each pair alone (positions restart at every pair), loss and
gradients at TP=2 against TP=1, RoPE's frequencies against transformers' own functions, and the
refusals of what this family does not implement. The tiny models' attention depends on content
(`helpers/tiny_llama.py`): zeroing one query head, or dropping the rope scaling, moves the logits
far beyond the tolerance."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from helpers.distributed import free_port
from helpers.llama_workers import parity_worker
from helpers.tiny_llama import CONFIGS, LLAMA3_ROPE, hf_config, make_hf_llama
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from megatron.models.common.rope import RopeScaling, inverse_frequencies, positions_from_segments
from megatron.models.llama.config import LlamaModelConfig
from megatron.models.spec import UnsupportedConfig

KINDS = tuple(CONFIGS)
LOGITS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def parity_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama_parity")
    folders = {}
    for kind in KINDS:
        folders[kind] = str(root / kind)
        make_hf_llama(folders[kind], kind)
    out = str(root / "results.pt")
    mp.spawn(parity_worker, args=(2, free_port(), folders, out), nprocs=2)
    return torch.load(out)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tp", [1, 2])
def test_logits_match_transformers(parity_results, kind, tp):
    assert parity_results[f"{kind}_tp{tp}_logits"] < LOGITS_TOLERANCE


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tp", [1, 2])
def test_packed_pairs_match_each_pair_alone(parity_results, kind, tp):
    assert parity_results[f"{kind}_tp{tp}_packed"] < LOGITS_TOLERANCE


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tp", [1, 2])
def test_one_query_head_moves_the_logits_far_beyond_the_tolerance(parity_results, kind, tp):
    assert parity_results[f"{kind}_tp{tp}_zeroed_query"] > 100 * LOGITS_TOLERANCE


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_gradients_at_tp2_match_tp1(parity_results, kind):
    assert parity_results[f"{kind}_loss_tp2_vs_tp1"] < 1e-6
    assert parity_results[f"{kind}_grad_scale"] > 1e-4
    assert parity_results[f"{kind}_grad_tp2_vs_tp1"] < 1e-6


@pytest.mark.multiprocess
@pytest.mark.slow
def test_dropping_the_llama3_rope_scaling_moves_the_logits_far_beyond_the_tolerance(parity_results):
    assert parity_results["llama_without_rope_scaling"] > 100 * LOGITS_TOLERANCE


@pytest.mark.parametrize("rope", [LLAMA3_ROPE, {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 8192},
                                  {"rope_type": "default", "rope_theta": 10000.0}])
@pytest.mark.parametrize("head_dim", [8, 64, 128])
def test_rope_frequencies_match_transformers(rope, head_dim):
    config = hf_config("llama", rope_parameters=rope, head_dim=head_dim)
    ours = LlamaModelConfig.from_hf(config)
    if rope["rope_type"] == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        theirs, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    assert torch.equal(inverse_frequencies(head_dim, ours.rope_theta, ours.rope_scaling), theirs)
    if rope["rope_type"] == "llama3":  # and the scaling changes them
        assert not torch.equal(inverse_frequencies(head_dim, ours.rope_theta), theirs)
        assert ours.rope_scaling == RopeScaling(rope["factor"], 1.0, 4.0, rope["original_max_position_embeddings"])


def test_rope_scaling_is_read_from_an_older_config_s_rope_scaling():
    """A `config.json` of transformers 4 (`rope_scaling` and `rope_theta`) gives the same fields."""
    from transformers import LlamaConfig

    old = LlamaConfig(hidden_size=32, num_attention_heads=4, head_dim=8, rope_theta=100.0,
                      rope_scaling={k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"})
    ours = LlamaModelConfig.from_hf(old)
    assert (ours.rope_type, ours.rope_theta, ours.rope_factor, ours.rope_original_max_positions) == \
        ("llama3", 100.0, 4.0, 16)


def test_positions_restart_at_every_pair():
    segments = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert positions_from_segments(segments).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "longrope"])
def test_another_rope_type_is_refused_naming_it(rope_type):
    rope = {"rope_type": rope_type, "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 16,
            "short_factor": [1.0] * 4, "long_factor": [1.0] * 4}
    with pytest.raises(UnsupportedConfig, match=f"rope_type '{rope_type}' is not implemented"):
        LlamaModelConfig.from_hf(hf_config("llama", rope_parameters=rope))


def test_fields_this_family_does_not_implement_are_refused_naming_them():
    with pytest.raises(UnsupportedConfig, match="hidden_act 'gelu'"):
        LlamaModelConfig.from_hf(hf_config("llama", hidden_act="gelu"))
    with pytest.raises(UnsupportedConfig, match="partial_rotary_factor 0.5"):
        LlamaModelConfig.from_hf(hf_config("llama", rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                     "partial_rotary_factor": 0.5}))
    mistral = LlamaModelConfig.from_hf(hf_config("mistral", sliding_window=16))
    mistral.check_sequence_length(16)
    with pytest.raises(UnsupportedConfig, match="sliding_window 16 is shorter than --seq-length 32"):
        mistral.check_sequence_length(32)
    qwen = LlamaModelConfig.from_hf(hf_config("qwen2", use_sliding_window=True, sliding_window=16,
                                              max_window_layers=1))
    with pytest.raises(UnsupportedConfig, match="sliding_window 16"):
        qwen.check_sequence_length(32)
    assert LlamaModelConfig.from_hf(hf_config("qwen2", use_sliding_window=False)).sliding_window is None


def test_tensor_parallel_must_divide_the_kv_heads_and_names_the_sizes_that_work():
    config = LlamaModelConfig.from_hf(hf_config("llama", num_attention_heads=8, num_key_value_heads=2))
    config.check_tensor_parallel(2)
    with pytest.raises(ValueError, match=r"does not divide the 2 KV heads.*it may be 1, 2"):
        config.check_tensor_parallel(4)
