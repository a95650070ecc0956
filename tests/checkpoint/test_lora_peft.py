"""HF PEFT LoRA adapters <-> our LoRA checkpoints, with real PEFT and transformers: an adapter made
here with `get_peft_model` (random non-zero B; on a tiny BLOOM; on a tiny Llama with 4 query
heads over 2 KV heads, rsLoRA, q/k/v and gate/up sharing their A as our fused layers do; and on
it as PEFT adapts it usually: each projection its own A, q and v without k) is
imported at TP1 and TP2 (`hf_to_megatron.py --lora-dir`), and our model with those adapters gives
PEFT's logits; its export (`megatron_to_hf.py --lora-format peft`) loads in `PeftModel` with no
missing or unexpected keys, bit for bit the original's tensors; `--merge-lora` gives PEFT's
`merge_and_unload()` weights; `tools/evaluate.py` scores a LoRA checkpoint as the merged model;
the PEFT settings we do not implement, and a LoRA checkpoint exported as a model, are refused by
name (exit 2); finetune_xp3.py loads imported adapters with --lora-load. Each family's adapter is
made, imported and exported once per module."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers.distributed import free_port, gloo_world
from helpers.finetune_runs import final_weights, finetune, tiny_model_args
from helpers.parity import build_from_hf
from helpers.paths import REPO, run_tool_in_process
from helpers.tiny import VOCAB, make_hf_model
from helpers.tiny_llama import make_hf_llama
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from megatron.checkpoint.layer_files import CheckpointReader
from megatron.checkpoint.loading import load_layers_into_model
from megatron.checkpoint.metadata import read_metadata, write_metadata
from megatron.data.tokenizer import HFTokenizer
from megatron.models import get_model_spec
from megatron.models.common import lora as lora_module
from megatron.train.engine import ModelWithLoss, add_adapters
from megatron.utils.megatron_core import parallel_state

TO_MEGATRON = "convert_checkpoint/hf_to_megatron.py"
TO_HF = "convert_checkpoint/megatron_to_hf.py"
KINDS = ("bloom", "llama", "llama_parts")
FAMILY = {"bloom": "bloom", "llama": "llama", "llama_parts": "llama"}
TARGETS = {"bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
           "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "llama_parts": ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}  # no k_proj
SHARED_A = (("k_proj", "q_proj"), ("v_proj", "q_proj"), ("up_proj", "gate_proj"))  # "llama": one A per fused layer
PARTS = {"llama_parts": ("gate_proj", "q_proj", "up_proj", "v_proj")}  # each its own A in our fused layers
RANK, ALPHA = 4, 8.0
PEFT_WEIGHTS = "adapter_model.safetensors"


def make_adapter(kind: str, hf_dir: Path, out: Path):
    """A PEFT adapter on the model in `hf_dir` with random non-zero B (and, for "llama", q/k/v and
    gate/up sharing one A; "llama_parts" keeps PEFT's own A for each), saved to `out`; the PeftModel."""
    base = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    model = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS[kind], lora_dropout=0.0,
                                            use_rslora=kind == "llama", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(3)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
            for shared, first in SHARED_A if kind == "llama" else ():
                if f".{shared}.lora_A" in name:
                    p.copy_(params[name.replace(shared, first)])
    model.save_pretrained(out)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_dir) -> dict[str, dict]:
    """Per family: the HF base, the PEFT adapter and its PeftModel, our LoRA checkpoints of it at
    TP1 and TP2, the TP2 one exported as PEFT, our base checkpoint, the TP2 adapters recording that
    base, and their --merge-lora export."""
    root = tmp_path_factory.mktemp("lora_peft")
    demo_vocab = HFTokenizer(demo_dir / "tokenizer").vocab_size  # for evaluate.py and finetune_xp3.py
    folders = {}
    for kind in KINDS:
        f = {name: root / kind / name for name in ("hf", "peft", "tp1", "tp2", "export", "base", "with_base", "merged")}
        if kind == "bloom":
            make_hf_model(str(f["hf"]), num_heads=4, seed=1, vocab=demo_vocab)
        else:
            make_hf_llama(str(f["hf"]), "llama", seed=1, vocab_size=demo_vocab)
        f["model"] = make_adapter(kind, f["hf"], f["peft"])
        for tp in (1, 2):
            run_tool_in_process(TO_MEGATRON, "--hf-dir", f["hf"], "--lora-dir", f["peft"], "--output-dir", f[f"tp{tp}"],
                                "--target-tp", tp)
        run_tool_in_process(TO_HF, "--checkpoint-dir", f["tp2"], "--lora-format", "peft", "--output-dir", f["export"],
                            "--base-model-name-or-path", f["hf"])
        run_tool_in_process(TO_MEGATRON, "--hf-dir", f["hf"], "--output-dir", f["base"])
        shutil.copytree(f["tp2"], f["with_base"])  # as a training run on that base records it
        base = {"folder": str(f["base"]), "tag": "global_step0"}
        write_metadata(f["with_base"], dataclasses.replace(read_metadata(f["with_base"]), lora_base=base))
        run_tool_in_process(TO_HF, "--checkpoint-dir", f["with_base"], "--merge-lora", "--output-dir", f["merged"])
        folders[kind] = f
    return folders


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(9))


def peft_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens()).logits


def our_logits(kind: str, hf_dir: str, lora_dir: str, tp: int) -> torch.Tensor:
    """Our model's logits (the padded vocabulary) at TP `tp` (megatron-core's groups in this
    process's world) on the HF base, adapters attached as training attaches them and loaded from
    our LoRA checkpoint."""
    spec = get_model_spec(FAMILY[kind])
    model = build_from_hf(spec, hf_dir, tp)
    add_adapters(ModelWithLoss(model, True), spec, model.config, read_metadata(lora_dir).lora, seed=0,
                 is_pipeline=False)
    load_layers_into_model(model, CheckpointReader(lora_dir, spec).layer, spec.adapter,
                           parallel_state.get_tensor_model_parallel_rank(), tp, adapters_only=True)
    ids = tokens()
    with torch.no_grad():
        return model.eval()(ids, torch.ones_like(ids), gather_logits=True)


def tp2_worker(rank: int, world: int, port: int, folders: dict[str, tuple[str, str]], out: str) -> None:
    """`our_logits` at TP=world for each family's (HF base, LoRA checkpoint)."""
    with gloo_world(rank, world, port):
        logits = {kind: our_logits(kind, hf_dir, lora_dir, world) for kind, (hf_dir, lora_dir) in folders.items()}
        if rank == 0:
            torch.save(logits, out)


@pytest.mark.parametrize("kind", KINDS)
def test_imported_adapters_at_tp1_give_peft_logits(setup, kind):
    f = setup[kind]
    with gloo_world(0, 1, free_port()):
        ours = our_logits(kind, str(f["hf"]), str(f["tp1"]), 1)
    reference = peft_logits(f["model"])
    with f["model"].disable_adapter():
        base = peft_logits(f["model"])
    assert (reference - base).abs().max() > 1e-1  # the adapters weigh in the logits
    assert (ours[..., :reference.shape[-1]] - reference).abs().max() < 1e-5


@pytest.mark.slow
@pytest.mark.multiprocess
def test_imported_adapters_at_tp2_give_peft_logits(setup, tmp_path):
    assert all(read_metadata(setup[kind]["tp2"]).tensor_model_parallel_size == 2 for kind in KINDS)
    folders = {kind: (str(setup[kind]["hf"]), str(setup[kind]["tp2"])) for kind in KINDS}
    mp.spawn(tp2_worker, args=(2, free_port(), folders, str(tmp_path / "out.pt")), nprocs=2)
    ours = torch.load(tmp_path / "out.pt")
    for kind in KINDS:
        reference = peft_logits(setup[kind]["model"])
        assert (ours[kind][..., :reference.shape[-1]] - reference).abs().max() < 1e-5, kind


@pytest.mark.parametrize("kind", KINDS)
def test_the_import_records_peft_settings_and_no_base(setup, kind):
    meta = read_metadata(setup[kind]["tp2"])
    assert meta.family == FAMILY[kind] and meta.lora_base is None and meta.lora.parts == PARTS.get(kind)
    assert (meta.lora.rank, meta.lora.alpha, meta.lora.rslora) == (RANK, ALPHA, kind == "llama")
    assert meta.lora.targets == ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


@pytest.mark.parametrize("kind", KINDS)
def test_export_loads_in_peft_with_every_key_and_is_the_original_bit_for_bit(setup, kind):
    f = setup[kind]
    exported, original = load_file(str(f["export"] / PEFT_WEIGHTS)), load_file(str(f["peft"] / PEFT_WEIGHTS))
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    config = json.loads((f["export"] / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"], config["use_rslora"],
            config["bias"], config["fan_in_fan_out"]) == ("LORA", "CAUSAL_LM", RANK, ALPHA, kind == "llama", "none",
                                                          False)
    assert sorted(config["target_modules"]) == sorted(TARGETS[kind])
    assert config["base_model_name_or_path"] == str(f["hf"])

    base = AutoModelForCausalLM.from_pretrained(f["hf"], attn_implementation="eager")
    loaded = PeftModel.from_pretrained(base, f["export"]).eval()
    assert get_peft_model_state_dict(loaded).keys() == exported.keys()
    result = set_peft_model_state_dict(loaded, exported)
    assert [k for k in result.missing_keys if "lora_" in k] == [] and result.unexpected_keys == []
    assert (peft_logits(loaded) - peft_logits(f["model"])).abs().max() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_merge_lora_export_is_peft_merge_and_unload(setup, kind):
    f = setup[kind]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(f["hf"]), f["peft"])
    reference = reference.merge_and_unload().state_dict()
    base, merged = load_file(str(f["hf"] / "model.safetensors")), load_file(str(f["merged"] / "model.safetensors"))
    assert merged.keys() == base.keys() - ({"lm_head.weight"} if kind == "bloom" else set())
    moved = 0
    for name, tensor in merged.items():
        assert tensor.dtype == base[name].dtype
        assert (tensor - reference[name]).abs().max() < 1e-6, name
        moved += not torch.equal(tensor, base[name])
    assert moved == 2 * len(TARGETS[kind])  # every adapted weight of the 2 blocks


@pytest.mark.multiprocess
def test_evaluate_scores_a_lora_checkpoint_as_its_merged_model(setup, demo_dir, tmp_path):
    f = setup["bloom"]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": str(i), "dataset": "d", "language": "en", "prompt": "p",
                                         "inputs": f"the {word} sat on the", "choices": ["mat", "river bank"],
                                         "label": i % 2}) + "\n"
                             for i, word in enumerate(["cat", "dog", "moon"])))
    common = ["--tasks", tasks, "--tokenizer-name-or-path", demo_dir / "tokenizer", "--seq-length", "32"]
    finetune(1, [*common, "--checkpoint-dir", f["with_base"], "--per-example-output", tmp_path / "ours.jsonl"],
             script=REPO / "tools" / "evaluate.py")
    run_tool_in_process("evaluate.py", *common, "--hf-dir", f["merged"], "--per-example-output",
                        tmp_path / "merged.jsonl")
    ours, merged = ([json.loads(line)["scores"] for line in (tmp_path / name).read_text().splitlines()]
                    for name in ("ours.jsonl", "merged.jsonl"))
    assert len(ours) == 3 and ours == [pytest.approx(m, abs=1e-5, rel=0) for m in merged]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_finetune_continues_imported_adapters_on_the_converted_base(setup, demo_dir, demo_data, tmp_path):
    """`finetune_xp3.py --load BASE --lora-load IMPORTED`: at lr 0 the adapters it saves are the
    imported ones and its checkpoint records the base; with PEFT's own A per projection (q and v
    without k), training (TP2) keeps them so: B stays zero outside each row's own projection and
    k's A slice zero, and the export is a PEFT adapter of the original's keys, trained."""
    common = [*tiny_model_args(demo_dir, demo_data), "--micro-batch-size", "2", "--global-batch-size", "2",
              "--train-iters", "2", "--eval-iters", "0", "--attention-backend", "reference"]
    f = setup["bloom"]
    finetune(1, [*common, "--lr", "0", "--min-lr", "0", "--load", f["base"], "--lora-load", f["tp1"],
                 "--save", tmp_path / "bloom"])
    saved, imported = final_weights(tmp_path / "bloom"), final_weights(f["tp1"])
    assert saved.keys() == imported.keys() and len(saved) == 2 * 2 * 4
    assert all(torch.equal(saved[name], imported[name]) for name in saved)
    assert read_metadata(tmp_path / "bloom").lora_base["folder"] == str(f["base"])

    f = setup["llama_parts"]
    finetune(2, [*common, "--lr", "1e-2", "--load", f["base"], "--lora-load", f["tp2"], "--save", tmp_path / "llama",
                 "--tensor-model-parallel-size", "2"])
    spec, meta = get_model_spec("llama"), read_metadata(tmp_path / "llama")
    trained, imported = CheckpointReader(tmp_path / "llama", spec), CheckpointReader(f["tp2"], spec)
    names, rows = spec.adapter.lora_fused_rows("self_attention.query_key_value", meta.model)
    for layer in (3, 4):
        qkv_a = trained.layer(layer)["self_attention.query_key_value.lora_A.weight"]
        qkv_b = trained.layer(layer)["self_attention.query_key_value.lora_B.weight"]
        k = names.index("k_proj")
        assert not qkv_a[k * RANK:(k + 1) * RANK].any() and not qkv_b[:, k * RANK:(k + 1) * RANK].any()
        outside = 1 - lora_module.part_mask(meta.lora, names, rows)
        assert not (qkv_b * outside).any()
        assert not torch.equal(qkv_b, imported.layer(layer)["self_attention.query_key_value.lora_B.weight"])
    run_tool_in_process(TO_HF, "--checkpoint-dir", tmp_path / "llama", "--lora-format", "peft", "--output-dir",
                        tmp_path / "export")
    exported, original = load_file(str(tmp_path / "export" / PEFT_WEIGHTS)), load_file(str(f["peft"] / PEFT_WEIGHTS))
    assert exported.keys() == original.keys()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(f["hf"]), tmp_path / "export")
    result = set_peft_model_state_dict(loaded, exported)
    assert [k for k in result.missing_keys if "lora_" in k] == [] and result.unexpected_keys == []


def _edited_adapter(source: Path, folder: Path, settings: dict | None = None, drop: str | None = None,
                    change: str | None = None) -> Path:
    """A copy of a PEFT adapter folder with `settings` in its config, the tensors matching
    `drop` left out and those matching `change` changed."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **(settings or {})}))
    tensors = load_file(str(folder / PEFT_WEIGHTS))
    tensors = {n: t + (0.5 if change and change in n else 0.0) for n, t in tensors.items() if not (drop and drop in n)}
    save_file(tensors, str(folder / PEFT_WEIGHTS))
    return folder


REFUSED = {  # case: (family, edit, a name the refusal must give)
    "dora": ("bloom", {"settings": {"use_dora": True}}, "use_dora"),
    "bias": ("bloom", {"settings": {"bias": "lora_only"}}, "bias"),
    "fan_in_fan_out": ("bloom", {"settings": {"fan_in_fan_out": True}}, "fan_in_fan_out"),
    "rank_pattern": ("llama", {"settings": {"rank_pattern": {"q_proj": 8}}}, "rank_pattern"),
    "alpha_pattern": ("llama", {"settings": {"alpha_pattern": {"q_proj": 8}}}, "alpha_pattern"),
    "some_layers": ("bloom", {"settings": {"layers_to_transform": [0]}}, "layers_to_transform"),
    "lm_head": ("bloom", {"settings": {"target_modules": TARGETS["bloom"] + ["lm_head"]}}, "lm_head"),
    "embeddings": ("llama", {"settings": {"target_modules": TARGETS["llama"] + ["embed_tokens"]}}, "embed_tokens"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_peft_settings_we_do_not_implement_are_refused_by_name(setup, case, tmp_path):
    kind, edit, name = REFUSED[case]
    adapter = _edited_adapter(setup[kind]["peft"], tmp_path / "peft", **edit)
    result = run_tool_in_process(TO_MEGATRON, "--hf-dir", setup[kind]["hf"], "--lora-dir", adapter, "--output-dir",
                                 tmp_path / "out", check=False)
    assert result.returncode == 2 and name in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_lora_checkpoint_exported_as_a_model_is_refused_naming_both_ways(setup, tmp_path):
    result = run_tool_in_process(TO_HF, "--checkpoint-dir", setup["llama"]["tp2"], "--output-dir", tmp_path / "out",
                                 check=False)
    assert result.returncode == 2 and "--lora-format peft" in result.stderr and "--merge-lora" in result.stderr
    result = run_tool_in_process(TO_HF, "--checkpoint-dir", setup["llama"]["base"], "--lora-format", "peft",
                                 "--output-dir", tmp_path / "out", check=False)
    assert result.returncode == 2 and "not LoRA adapters" in result.stderr
