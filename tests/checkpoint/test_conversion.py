"""HF <-> our checkpoints: bit-identical round trips through TP2/PP2 (fp32 and bf16), every HF
input form, exported folders that transformers loads with our model's logits, and clear errors.
The tools' `main` runs in this process (`run_tool_in_process`), except in the exported-folder
test, which runs them as commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers.bloom_workers import checkpoint_logits_worker
from helpers.tiny import VOCAB, make_hf_model
from helpers.paths import run_tool, run_tool_in_process, tool_main
from helpers.distributed import free_port
from safetensors import safe_open
from transformers import BloomForCausalLM

from megatron.checkpoint.layout import layer_file
from megatron.checkpoint.layer_files import CheckpointReader
from megatron.models import get_model_spec

TO_MEGATRON = "convert_checkpoint/hf_to_megatron.py"
TO_HF = "convert_checkpoint/megatron_to_hf.py"


def write_hf_dir(folder: Path, demo_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The tiny HF BLOOM the tests convert, saved in `dtype`, with the demo tokenizer."""
    make_hf_model(str(folder), num_heads=4, seed=3, dtype=dtype)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(demo_dir / "tokenizer" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, demo_dir) -> Path:
    return write_hf_dir(tmp_path_factory.mktemp("hf") / "bloom", demo_dir)


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name.removeprefix("transformer."): f.get_tensor(name) for name in f.keys()})
    return tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_round_trip_through_tp2_pp2_is_bit_identical(hf_dir, demo_dir, tmp_path, dtype):
    """Every tensor comes back bit for bit, in the dtype it was saved in (fp32, or bf16 as BLOOM
    is published), and config.json names that dtype. (The tools' `main` in this process: the
    other tests run them as commands.)"""
    if dtype != torch.float32:
        hf_dir = write_hf_dir(tmp_path / "source", demo_dir, dtype)
    assert tool_main(TO_MEGATRON)(["--hf-dir", str(hf_dir), "--output-dir", str(tmp_path / "ours"),
                                   "--target-tp", "2", "--target-pp", "2"]) == 0
    tag = tmp_path / "ours" / (tmp_path / "ours" / "latest").read_text()
    assert layer_file(tag, 3, 1).is_file() and layer_file(tag, 2 + 4, 0).is_file()  # block 0, final norm (L=2)
    assert len(list(tag.glob("mp_rank_*_model_states.pt"))) == 4
    assert tool_main(TO_HF)(["--checkpoint-dir", str(tmp_path / "ours"), "--output-dir", str(tmp_path / "back"),
                             "--tokenizer-dir", str(hf_dir), "--max-shard-size", "20KB"]) == 0
    original, back = hf_tensors(hf_dir), hf_tensors(tmp_path / "back")
    original.pop("lm_head.weight", None)
    assert original.keys() == back.keys()
    for name in original:
        assert original[name].dtype == back[name].dtype == dtype and torch.equal(original[name], back[name]), name
    assert len(list((tmp_path / "back").glob("model-*.safetensors"))) > 1  # sharded by size, with an index
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["dtype"] == str(dtype).removeprefix("torch.")
    assert (tmp_path / "back" / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_exported_folder_gives_our_models_logits(hf_dir, tmp_path):
    run_tool(TO_MEGATRON, "--hf-dir", hf_dir, "--output-dir", tmp_path / "ours", "--target-tp", "2")
    run_tool(TO_HF, "--checkpoint-dir", tmp_path / "ours", "--output-dir", tmp_path / "hf")
    mp.spawn(checkpoint_logits_worker, args=(2, free_port(), str(tmp_path / "ours"), str(tmp_path / "out.pt")), nprocs=2)
    ours = torch.load(tmp_path / "out.pt")
    hf = BloomForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(ours["tokens"]).logits
    assert (theirs - ours["logits"]).abs().max() < 1e-5


def write_bin_checkpoint(source: Path, folder: Path, shards: int) -> None:
    """The older HF form: pytorch_model.bin, or numbered .bin shards with an index."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    state = BloomForCausalLM.from_pretrained(source).state_dict()
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names, weight_map = list(state), {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, folder / file)
        weight_map.update({n: file for n in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_every_input_form_converts_the_same(hf_dir, tmp_path):
    BloomForCausalLM.from_pretrained(hf_dir).save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    write_bin_checkpoint(hf_dir, tmp_path / "bin", shards=1)
    write_bin_checkpoint(hf_dir, tmp_path / "bin_sharded", shards=3)
    outputs = []
    for source in (hf_dir, tmp_path / "sharded", tmp_path / "bin", tmp_path / "bin_sharded"):
        run_tool_in_process(TO_MEGATRON, "--hf-dir", source, "--output-dir", tmp_path / f"out_{source.name}", "--target-tp", "2")
        outputs.append(CheckpointReader(tmp_path / f"out_{source.name}", get_model_spec()))
    for layer in (1, 3, 4, 6):
        reference = outputs[0].layer(layer)
        for other in outputs[1:]:
            tensors = other.layer(layer)
            assert tensors.keys() == reference.keys() and all(torch.equal(tensors[k], reference[k]) for k in tensors)


def test_vocabulary_padding_is_added_and_removed(hf_dir, tmp_path):
    run_tool_in_process(TO_MEGATRON, "--hf-dir", hf_dir, "--output-dir", tmp_path / "ours", "--target-tp", "2",
             "--make-vocab-size-divisible-by", "64")
    checkpoint = CheckpointReader(tmp_path / "ours", get_model_spec())
    assert checkpoint.config.vocab_size == 256 and checkpoint.layer(1)["word_embeddings.weight"].shape[0] == 256
    assert checkpoint.layer(1)["word_embeddings.weight"][VOCAB:].abs().sum() == 0
    run_tool_in_process(TO_HF, "--checkpoint-dir", tmp_path / "ours", "--output-dir", tmp_path / "hf")
    assert hf_tensors(tmp_path / "hf")["word_embeddings.weight"].shape[0] == VOCAB


def test_disagreeing_replicated_tensors_are_named(hf_dir, tmp_path):
    run_tool_in_process(TO_MEGATRON, "--hf-dir", hf_dir, "--output-dir", tmp_path / "ours", "--target-tp", "2")
    tag = tmp_path / "ours" / "global_step0"
    shard = torch.load(layer_file(tag, 4, 1))
    shard["post_attention_layernorm.weight"] += 0.5
    torch.save(shard, layer_file(tag, 4, 1))
    result = run_tool_in_process(TO_HF, "--checkpoint-dir", tmp_path / "ours", "--output-dir", tmp_path / "hf", check=False)
    assert result.returncode == 1
    assert "'post_attention_layernorm.weight' differs between tensor-parallel ranks 0 and 1" in result.stderr
    assert not (tmp_path / "hf").exists()


def broken_copy(hf_dir: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(hf_dir, copy)
    damage(copy)
    return copy


def set_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, args, message",
    [
        (lambda f: (f / "config.json").unlink(), [], "no config.json"),
        (lambda f: (f / "model.safetensors").unlink(), [], "no model.safetensors"),
        (lambda f: set_config(f, hidden_size=64), [], "has shape"),
        (lambda f: set_config(f, n_layer=1), [], "does not have"),
        (lambda f: None, ["--target-tp", "3"], "does not divide the 4 attention heads"),
        (lambda f: None, ["--target-pp", "3"], "--target-pp 3"),
    ],
    ids=["no-config", "no-weights", "shape", "extra-layers", "tp-heads", "pp-layers"],
)
def test_bad_inputs_stop_with_a_clear_message(hf_dir, tmp_path, damage, args, message):
    source = broken_copy(hf_dir, tmp_path, damage)
    result = run_tool_in_process(TO_MEGATRON, "--hf-dir", source, "--output-dir", tmp_path / "out", *args, check=False)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_megatron_core_extra_state_entries_are_ignored(hf_dir, tmp_path):
    run_tool_in_process(TO_MEGATRON, "--hf-dir", hf_dir, "--output-dir", tmp_path / "ours")
    path = layer_file(tmp_path / "ours" / "global_step0", 3, 0)
    shard = torch.load(path)
    shard["self_attention.dense._extra_state"] = None  # as checkpoints trained before these were dropped have it
    torch.save(shard, path)
    run_tool_in_process(TO_HF, "--checkpoint-dir", tmp_path / "ours", "--output-dir", tmp_path / "hf")
    assert "h.0.self_attention.dense.weight" in hf_tensors(tmp_path / "hf")


def test_missing_layer_file_is_named(hf_dir, tmp_path):
    run_tool_in_process(TO_MEGATRON, "--hf-dir", hf_dir, "--output-dir", tmp_path / "ours", "--target-tp", "2")
    layer_file(tmp_path / "ours" / "global_step0", 3, 1).unlink()
    result = run_tool_in_process(TO_HF, "--checkpoint-dir", tmp_path / "ours", "--output-dir", tmp_path / "hf", check=False)
    assert result.returncode == 1 and "layer_03-model_01-model_states.pt: missing" in result.stderr



@pytest.mark.multiprocess
@pytest.mark.slow
def test_deepspeed_pipeline_module_loads_our_checkpoint_at_tp2_pp2(hf_dir, tmp_path):
    from helpers.bloom_workers import pipeline_load_worker

    run_tool_in_process(TO_MEGATRON, "--hf-dir", hf_dir, "--output-dir", tmp_path / "ours", "--target-tp", "2", "--target-pp", "2")
    out = str(tmp_path / "report")
    mp.spawn(pipeline_load_worker, args=(4, free_port(), str(tmp_path / "ours"), str(hf_dir), out), nprocs=4)
    reports = [torch.load(f"{out}.{rank}") for rank in range(4)]
    assert all(r["max_error"] == 0.0 and r["tied_error"] == 0.0 for r in reports)
    stages = {r["stage"]: r["layers"] for r in reports}
    assert stages[0] == [1, 3] and stages[1] == [4, 6]  # embedding + block 0 | block 1 + final norm
