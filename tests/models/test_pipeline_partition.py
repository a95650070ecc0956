"""Parameter counts from the state-dict adapter's shape table against transformers' BLOOM, and the
pipeline partition's refusal of a layout that leaves a stage without parameters."""

from __future__ import annotations

import pytest
from transformers import BloomConfig, BloomForCausalLM

from megatron.models.bloom.config import BloomModelConfig
from megatron.models.bloom.pipeline import check_partition
from megatron.models.bloom.state_dict_adapter import layer_parameters


def test_parameter_counts_match_transformers_bloom():
    hf = BloomForCausalLM(BloomConfig(vocab_size=256, hidden_size=64, n_layer=3, n_head=4))
    config = BloomModelConfig(vocab_size=256, hidden_size=64, num_layers=3, num_heads=4)
    ours = sum(layer_parameters(config, kind, 1) for kind in ("embedding", *["block"] * 3, "final_norm"))
    assert ours == sum(p.numel() for p in hf.parameters())


def test_pipeline_stages_may_outnumber_layers_only_while_each_holds_parameters():
    bloom_176b = BloomModelConfig(vocab_size=250880, hidden_size=14336, num_layers=70, num_heads=112)
    check_partition(bloom_176b, 1, 72, "type:transformer|embedding")  # BLOOM-176B's own layout
    tiny = BloomModelConfig(vocab_size=256, hidden_size=64, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match="--pipeline-model-parallel-size 5 leaves stage 2 without parameters"):
        check_partition(tiny, 1, 5, "type:transformer|embedding")
    with pytest.raises(ValueError, match="--pp-partition-method type:attention: matches none"):
        check_partition(tiny, 1, 2, "type:attention")
