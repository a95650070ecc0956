"""finetune_xp3.py on the Llama family, end to end on CPU (gloo, torchrun), from a converted tiny
`LlamaForCausalLM` (untied LM head, llama3 rope scaling, 4 heads over 2 KV heads) and
`Qwen2ForCausalLM` (tied, q/k/v bias) over the demo tokenizer: every layout reproduces the
single-process loss and gradient-norm curve, an interrupted run resumes bit for bit, the
iteration-0 validation loss is transformers' on the same pairs one at a time, a random model from
Megatron's architecture flags trains and exports, and what the family refuses stops the launch
with exit status 2 naming the field or flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.finetune_runs import (copy_as_of, final_weights, finetune, refused_before_start, scalars,
                                   tiny_model_args)
from helpers.paths import run_tool_in_process
from helpers.tiny_llama import make_hf_llama
from transformers import AutoModelForCausalLM

from megatron.checkpoint.metadata import read_metadata
from megatron.data.mtf_datasets import build_group
from megatron.data.tokenizer import HFTokenizer
from megatron.train.arguments import parse_config
from synthetic.corpus import generate_choice_examples

BASE = ["--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "2e-3", "--lr-warmup-iters", "2",
        "--lr-decay-style", "cosine", "--min-lr", "1e-4", "--attention-backend", "reference",
        "--lm-head-loss", "reference", "--no-bias-dropout-fusion"]
TP2, PP2 = ["--tensor-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "2"]


@pytest.fixture(scope="module")
def converted(demo_dir, tmp_path_factory) -> dict[str, Path]:
    """kind -> (HF folder, our TP1 PP1 checkpoint of it), over the demo tokenizer's vocabulary
    (1,024 tokens: a multiple of 128 x TP, so no padding rows enter the softmax)."""
    root = tmp_path_factory.mktemp("tiny_llamas")
    vocab = HFTokenizer(demo_dir / "tokenizer").vocab_size
    folders = {}
    for kind in ("llama", "qwen2"):
        make_hf_llama(str(root / kind / "hf"), kind, seed=2, vocab_size=vocab)
        run_tool_in_process("convert_checkpoint/hf_to_megatron.py", "--hf-dir", root / kind / "hf",
                            "--output-dir", root / kind / "ours")
        folders[kind] = root / kind
    return folders


def common_args(demo_dir, demo_data, checkpoint: Path, iters: int = 6) -> list:
    return [*tiny_model_args(demo_dir, demo_data), *BASE, "--train-iters", str(iters), "--load", checkpoint,
            "--hidden-dropout", "0", "--attention-dropout", "0", "--clip-grad", "0.3"]


LAYOUTS = {
    "llama": {"single": (1, []), "tp2_chunked_head": (2, [*TP2, "--lm-head-loss", "chunked"]), "pp2": (2, PP2),
              "tp2_pp2": (4, [*TP2, *PP2]), "dp2_zero1": (2, ["--zero-stage", "1"]),
              "dp2_zero3": (2, ["--zero-stage", "3"]),
              "tp2_triton_attention": (2, [*TP2, "--attention-backend", "triton"])},  # Triton's interpreter on CPU
    "qwen2": {"single": (1, []), "tp2_pp2": (4, [*TP2, *PP2])},  # the tied embedding on both pipeline ends
}


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_layouts_give_the_single_process_loss_curve(demo_dir, demo_data, converted, tmp_path, kind):
    """TP=2 (one KV group per rank; the untied head with the chunked LM head loss), PP=2,
    TP=2 x PP=2, DP=2 under ZeRO-1 (pipeline engine) and ZeRO-3 (whole-model engine), and TP=2 with
    the Triton attention kernel (grouped K/V, no ALiBi) reproduce
    one process's loss and gradient-norm curve, with clipping active, and score the zero-shot
    tasks (`--eval-tasks`) of the starting model alike; the first validation (iteration 0) is
    transformers' loss on the same rows' pairs, each pair alone."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(e) + "\n" for e in list(generate_choice_examples(1, seed=11))[::3]))
    common = [*common_args(demo_dir, demo_data, converted[kind] / "ours"), "--eval-iters", "1",
              "--eval-interval", "100", "--eval-tasks", tasks]
    curves = {}
    for name, (nprocs, extra) in LAYOUTS[kind].items():
        finetune(nprocs, [*common, *extra, "--tensorboard-dir", tmp_path / name])
        curves[name] = (scalars(tmp_path / name, "lm loss"), scalars(tmp_path / name, "grad-norm"),
                        scalars(tmp_path / name, "lm-loss-validation/valid"),
                        scalars(tmp_path / name, "eval-tasks/average"))
    losses, norms, validation, accuracy = curves.pop("single")
    assert len(losses) == 6 and min(norms.values()) > 0.3
    for name, (layout_losses, layout_norms, _, layout_accuracy) in curves.items():
        for step, loss in losses.items():
            assert layout_losses[step] == pytest.approx(loss, rel=2e-6, abs=0), (name, step)
            assert layout_norms[step] == pytest.approx(norms[step], rel=1e-4), (name, step)
        assert layout_accuracy[0] == accuracy[0], name
    assert validation[0] == pytest.approx(transformers_validation_loss(converted[kind] / "hf", common), rel=1e-5)


def transformers_validation_loss(hf_folder: Path, args: list) -> float:
    """The first validation of a one-process run of `args` (one global batch of micro-batches;
    the token mean of each, averaged), computed with transformers on each packed pair alone."""
    train = parse_config(list(map(str, args)), world_size=1)
    tokenizer = HFTokenizer(train.model.tokenizer)
    rows = build_group(train.data.valid[0], train.data.packing(train.seed), train.batch.global_batch, tokenizer.pad,
                       train.data.cache_path)
    model = AutoModelForCausalLM.from_pretrained(hf_folder, attn_implementation="eager").eval()
    micro_losses = []
    for start in range(0, train.batch.global_batch, train.batch.micro):
        total, count = 0.0, 0
        for index in range(start, start + train.batch.micro):
            row = {key: torch.as_tensor(value) for key, value in rows[index].items()}
            for segment in row["segment_ids"].unique().tolist():
                if segment == 0:
                    continue
                where = (row["segment_ids"] == segment).nonzero().squeeze(1)
                with torch.no_grad():
                    logits = model(row["tokens"][where][None].long()).logits[0]
                losses = F.cross_entropy(logits, row["labels"][where].long(), reduction="none")
                mask = row["loss_mask"][where].float()
                total += float((losses * mask).sum())
                count += int(mask.sum())
        micro_losses.append(total / count)
    return sum(micro_losses) / len(micro_losses)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_interrupted_run_resumes_bit_for_bit(demo_dir, demo_data, converted, tmp_path):
    """TP=2 x PP=2 with dropout (each TP rank its own masks) and activation recomputation: a
    relaunch from the checkpoint of iteration 3 gives iterations 4..6 of the uninterrupted run bit
    for bit and the same final weights, untied LM head included."""
    common = [*common_args(demo_dir, demo_data, converted["llama"] / "ours"), *TP2, *PP2, "--hidden-dropout", "0.1",
              "--attention-dropout", "0.1", "--checkpoint-activations", "--save-interval", "3", "--eval-iters", "0"]
    finetune(4, [*common, "--save", tmp_path / "whole", "--tensorboard-dir", tmp_path / "tb_whole"])
    copy_as_of(tmp_path / "whole", "global_step3", tmp_path / "split")
    second = finetune(4, [*common, "--save", tmp_path / "split", "--tensorboard-dir", tmp_path / "tb_second"])
    assert "training from iteration 3 to 6" in second.stdout
    assert not (tmp_path / "whole" / "zero_to_fp32.py").exists()  # DeepSpeed's, useless on our checkpoints
    whole, resumed = scalars(tmp_path / "tb_whole", "lm loss"), scalars(tmp_path / "tb_second", "lm loss")
    assert sorted(resumed) == [4, 5, 6] and all(resumed[i] == whole[i] for i in (4, 5, 6))
    final, expected = final_weights(tmp_path / "split"), final_weights(tmp_path / "whole")
    assert any("layer_07" in name for name in final)  # the untied LM head's own layer (L + 5)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_random_model_from_megatrons_flags_trains_and_exports(demo_dir, demo_data, tmp_path):
    """--position-embedding-type rope --normalization RMSNorm --swiglu and the GQA, untied and
    bias flags give a Llama-family checkpoint whose export transformers loads as Llama."""
    flags = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--position-embedding-type",
             "rope", "--normalization", "RMSNorm", "--swiglu", "--group-query-attention", "--num-query-groups", "2",
             "--ffn-hidden-size", "48", "--untie-embeddings-and-output-weights", "--disable-bias-linear",
             "--rotary-base", "500000", "--use-rope-scaling", "--norm-epsilon", "1e-6"]
    result = finetune(2, [*tiny_model_args(demo_dir, demo_data), *BASE, *TP2, *flags, "--train-iters", "2",
                          "--eval-iters", "0", "--save", tmp_path / "run"])
    assert "model: LlamaModelConfig(" in result.stdout and "; from scratch;" in result.stdout
    meta = read_metadata(tmp_path / "run")
    model = meta.model
    assert meta.family == "llama" and (model.num_kv_heads, model.ffn_hidden_size, model.tie_word_embeddings) == (2, 48, False)
    assert (model.qkv_bias, model.output_bias, model.mlp_bias, model.rope_type, model.rope_factor) == \
        (False, False, False, "llama3", 8.0)
    run_tool_in_process("convert_checkpoint/megatron_to_hf.py", "--checkpoint-dir", tmp_path / "run",
                        "--output-dir", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.num_key_value_heads == 2
    assert hf.config.rope_parameters["rope_type"] == "llama3" and hf.config.rope_parameters["rope_theta"] == 500000


def test_what_the_family_refuses_stops_the_launch_naming_it(demo_dir, demo_data, converted, tmp_path, capsys,
                                                            monkeypatch):
    """TP not dividing the KV heads, a sliding window shorter than the rows, and flags that
    contradict the checkpoint: exit status 2 before any process group, the field or flag named."""
    args = common_args(demo_dir, demo_data, converted["llama"] / "ours")
    monkeypatch.setenv("WORLD_SIZE", "4")
    error = refused_before_start([*args, "--tensor-model-parallel-size", "4"], capsys)
    assert "--tensor-model-parallel-size 4 does not divide the 2 KV heads" in error and "it may be 1, 2" in error
    monkeypatch.setenv("WORLD_SIZE", "1")
    error = refused_before_start([*args, "--group-query-attention", "--num-query-groups", "4"], capsys)
    assert "--num-query-groups disagrees with the checkpoint" in error and "num_kv_heads = 2" in error
    error = refused_before_start([*args, "--position-embedding-type", "alibi"], capsys)
    assert "the checkpoint in --load" in error and "llama model" in error
    error = refused_before_start([*args, "--add-qkv-bias"], capsys)
    assert "--add-qkv-bias disagrees with the checkpoint" in error
    mistral = tmp_path / "mistral"
    make_hf_llama(str(mistral / "hf"), "mistral", vocab_size=HFTokenizer(demo_dir / "tokenizer").vocab_size,
                  sliding_window=32)
    run_tool_in_process("convert_checkpoint/hf_to_megatron.py", "--hf-dir", mistral / "hf", "--output-dir",
                        mistral / "ours")
    error = refused_before_start(common_args(demo_dir, demo_data, mistral / "ours"), capsys)
    assert "sliding_window 32 is shorter than --seq-length 64" in error
    bloom_flags = [*tiny_model_args(demo_dir, demo_data), *BASE, "--train-iters", "4", "--num-layers", "1",
                   "--hidden-size", "8", "--num-attention-heads", "2"]
    error = refused_before_start([*bloom_flags, "--group-query-attention", "--num-query-groups", "1"], capsys)
    assert "--num-query-groups does not apply to the bloom family" in error
    error = refused_before_start([*bloom_flags, "--position-embedding-type", "rope"], capsys)
    assert "--position-embedding-type rope --normalization LayerNorm is no family" in error
