"""HF <-> our checkpoints for the Llama family: a tiny `LlamaForCausalLM` (untied, llama3 rope
scaling, GQA; and one with every bias), `Qwen2ForCausalLM` (tied, q/k/v bias) and
`MistralForCausalLM` (sliding window)
go to TP2 x PP2 and back bit for bit, the export loads with `AutoModelForCausalLM` as its own class
with the rope config, tying, biases and the true vocabulary, and the converters refuse what the
family does not implement by name (exit 2). Each kind is converted once and shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.paths import run_tool_in_process
from helpers.tiny import VOCAB
from helpers.tiny_llama import CONFIGS, make_hf_llama
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from megatron.checkpoint.layer_files import CheckpointReader
from megatron.checkpoint.metadata import read_metadata
from megatron.models import get_model_spec

TO_MEGATRON = "convert_checkpoint/hf_to_megatron.py"
TO_HF = "convert_checkpoint/megatron_to_hf.py"
KINDS = tuple(CONFIGS)
CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


@pytest.fixture(scope="module")
def round_trips(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per kind: the HF source, our TP2 x PP2 checkpoint of it, and its export."""
    root = tmp_path_factory.mktemp("llama_conversion")
    folders = {}
    for kind in KINDS:
        paths = {"hf": root / kind / "hf", "ours": root / kind / "ours", "back": root / kind / "back"}
        make_hf_llama(str(paths["hf"]), kind, seed=4)
        run_tool_in_process(TO_MEGATRON, "--hf-dir", paths["hf"], "--output-dir", paths["ours"], "--target-tp", "2",
                            "--target-pp", "2")
        run_tool_in_process(TO_HF, "--checkpoint-dir", paths["ours"], "--output-dir", paths["back"])
        folders[kind] = paths
    return folders


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_tp2_pp2_is_bit_identical(round_trips, kind):
    source, back = hf_tensors(round_trips[kind]["hf"]), hf_tensors(round_trips[kind]["back"])
    assert sorted(source) == sorted(back)
    for name, tensor in source.items():
        assert torch.equal(back[name], tensor), name
    assert ("lm_head.weight" in source) == (kind != "qwen2")  # the untied ones have their own head


@pytest.mark.parametrize("kind", KINDS)
def test_the_checkpoint_records_the_family_and_splits_whole_kv_groups(round_trips, kind):
    meta = read_metadata(round_trips[kind]["ours"])
    assert meta.family == "llama" and meta.model.hf_model_type == CONFIGS[kind]["model_type"]
    assert (meta.tensor_model_parallel_size, meta.pipeline_model_parallel_size) == (2, 2)
    reader = CheckpointReader(round_trips[kind]["ours"], get_model_spec("llama"))
    tag = reader.tag_dir
    shard = torch.load(tag / "layer_03-model_01-model_states.pt")
    # TP rank 1 holds KV group 1: its two query heads, its key head, its value head (8 rows each)
    assert shard["self_attention.query_key_value.weight"].shape == (4 * 8, 32)
    gate_up = shard["mlp.dense_h_to_4h.weight"]  # this rank's gate rows, then its up rows
    hf = hf_tensors(round_trips[kind]["hf"])
    assert torch.equal(gate_up[:24], hf["model.layers.0.mlp.gate_proj.weight"][24:])
    assert torch.equal(gate_up[24:], hf["model.layers.0.mlp.up_proj.weight"][24:])
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(shard["self_attention.query_key_value.weight"][:16], q[16:])
    assert torch.equal(shard["self_attention.query_key_value.weight"][16:24],
                       hf["model.layers.0.self_attn.k_proj.weight"][8:])


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_export_loads_as_its_own_class_with_the_same_logits(round_trips, kind):
    source, back = round_trips[kind]["hf"], round_trips[kind]["back"]
    original = json.loads((source / "config.json").read_text())
    exported = AutoConfig.from_pretrained(back)
    model = AutoModelForCausalLM.from_pretrained(back, attn_implementation="eager").eval()
    expected = CLASSES[CONFIGS[kind]["model_type"]]
    assert type(model).__name__ == expected and exported.architectures == [expected]
    assert exported.vocab_size == VOCAB and exported.tie_word_embeddings == original["tie_word_embeddings"]
    assert exported.rope_parameters == AutoConfig.from_pretrained(source).rope_parameters
    for key in ("num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps", "max_position_embeddings",
                "attention_bias", "mlp_bias", "sliding_window"):
        if key in original:
            assert getattr(exported, key) == original[key], key
    reference = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager").eval()
    tokens = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, reference(tokens).logits)


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0,
                          "original_max_position_embeddings": 16}}, "rope_type 'yarn' is not implemented"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not implemented"),
])
def test_what_the_family_does_not_implement_is_refused_naming_the_field(tmp_path, change, message):
    make_hf_llama(str(tmp_path / "hf"), "llama", **change)
    result = run_tool_in_process(TO_MEGATRON, "--hf-dir", tmp_path / "hf", "--output-dir", tmp_path / "out",
                                 check=False)
    assert result.returncode == 2 and message in result.stderr and "config.json" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_type_is_refused_naming_the_known_ones(tmp_path):
    make_hf_llama(str(tmp_path / "hf"), "llama")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(config, model_type="gemma")))
    result = run_tool_in_process(TO_MEGATRON, "--hf-dir", tmp_path / "hf", "--output-dir", tmp_path / "out",
                                 check=False)
    assert result.returncode == 1 and "model_type 'gemma'" in result.stderr and "'qwen2'" in result.stderr
