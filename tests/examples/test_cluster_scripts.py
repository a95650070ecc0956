"""The SLURM scripts of `examples/slurm/` as a user runs them, minus the cluster: they pass
`bash -n` and shellcheck; the xP3 preprocessing array task and the data-mixture tool turn an xP3
folder layout into datasets and mixture files (weights from the preprocessed bytes); and each
BLOOMZ recipe's dry run (and the Llama-3.1-8B and Qwen2.5-7B ones') prints its world size,
gradient accumulation, stages and memory estimate without launching anything, the memory pinned
to a figure derived by hand (the LoRA recipe's too, and the LoRA plan's terms on a small model, to
the byte)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO, run_tool, run_tool_in_process

from megatron.data.data_config import parse_weighted_split_group
from synthetic.corpus import write_jsonl

SLURM = REPO / "examples" / "slurm"
SCRIPTS = sorted([*SLURM.glob("*.sh"), *SLURM.glob("*.slurm"), *(REPO / "examples").glob("*.sh")])
LANGUAGES = {"fr": 600, "sw": 200}  # language -> rows


def test_scripts_pass_bash_n_and_shellcheck():
    assert len(SCRIPTS) >= 8
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", script], check=True)
    shellcheck = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert shellcheck, "shellcheck not installed (it comes with pip install -e '.[test]')"
    result = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.fixture(scope="module")
def xp3_data(demo_dir, tmp_path_factory) -> Path:
    """A two-language xP3 download (`xP3/<language>/*.jsonl`), preprocessed by the array job's
    tasks, and its mixture files written by the tool the submit script schedules."""
    root = tmp_path_factory.mktemp("xp3")
    for seed, (language, rows) in enumerate(LANGUAGES.items()):
        write_jsonl(root / "xP3" / language / f"xp3_{language}_tasks.jsonl", rows, seed=seed)
    data = root / "data"
    env = dict(os.environ, XP3_DIR=str(root / "xP3"), TOKENIZER=str(demo_dir / "tokenizer"), DATA_DIR=str(data),
               LANGUAGES=" ".join(LANGUAGES), PYTHON=sys.executable, REPO_DIR=str(REPO))
    for task in range(len(LANGUAGES)):
        subprocess.run(["bash", SLURM / "preprocess_xp3.slurm"], env=dict(env, SLURM_ARRAY_TASK_ID=str(task)),
                       check=True, capture_output=True)
    out_of_range = subprocess.run(["bash", SLURM / "preprocess_xp3.slurm"], env=dict(env, SLURM_ARRAY_TASK_ID="2"),
                                  capture_output=True, text=True)
    assert out_of_range.returncode == 2 and "only 2 languages" in out_of_range.stderr
    run_tool("make_data_mixture.py", *(data / f"xp3_{language}" for language in LANGUAGES),
             "--train-output", data / "xp3_train.txt", "--valid-output", data / "xp3_valid.txt",
             "--valid-fraction", "0.01")
    return data


def test_preprocessing_task_puts_the_bos_first_when_asked(xp3_data, demo_dir, tmp_path):
    """PREPEND_BOS=inputs (Llama 3's tokenizers want their BOS): every input document starts with
    the tokenizer's BOS, targets unchanged."""
    from megatron.data.pairs import PairDataset
    from megatron.data.tokenizer import HFTokenizer

    env = dict(os.environ, XP3_DIR=str(xp3_data.parent / "xP3"), TOKENIZER=str(demo_dir / "tokenizer"),
               DATA_DIR=str(tmp_path), LANGUAGES="sw", PREPEND_BOS="inputs", PYTHON=sys.executable,
               REPO_DIR=str(REPO), SLURM_ARRAY_TASK_ID="0")
    subprocess.run(["bash", SLURM / "preprocess_xp3.slurm"], env=env, check=True, capture_output=True)
    with_bos, plain = PairDataset(tmp_path / "xp3_sw"), PairDataset(xp3_data / "xp3_sw")
    bos = HFTokenizer(demo_dir / "tokenizer").bos
    assert len(with_bos) == len(plain) == LANGUAGES["sw"]
    for i in range(len(plain)):
        assert with_bos.inputs(i).tolist() == [bos, *plain.inputs(i).tolist()]
        assert with_bos.targets(i).tolist() == plain.targets(i).tolist()


def test_mixture_weights_follow_the_preprocessed_bytes(xp3_data):
    (train,) = shlex.split((xp3_data / "xp3_train.txt").read_text())
    group = parse_weighted_split_group(train, "train")
    assert group.name == "train"
    sizes = {d.prefix: sum((Path(f"{d.prefix}_{key}_document.bin")).stat().st_size for key in ("inputs", "targets"))
             for d in group.datasets}
    assert [Path(d.prefix).name for d in group.datasets] == [f"xp3_{language}" for language in LANGUAGES]
    for d in group.datasets:
        assert d.weight == pytest.approx(sizes[d.prefix] / sum(sizes.values()), rel=1e-5)
        assert (d.begin, d.end) == (0.0, 0.99)
    valid = [parse_weighted_split_group(text, "valid") for text in shlex.split((xp3_data / "xp3_valid.txt").read_text())]
    assert [g.name for g in valid] == [f"valid_xp3_{language}" for language in LANGUAGES]
    assert all((d.begin, d.end) == (0.99, 1.0) for g in valid for d in g.datasets)


def test_mixture_temperature_and_the_budget_epochs(xp3_data, tmp_path):
    """--temperature T weighs each dataset by bytes^(1/T) (T=3 flattens toward the small one);
    --budget-tokens N prints each one's share of N tokens, its training pairs, and the epochs of
    them: share x N over its training pairs' tokens, by hand from the files."""
    from megatron.data.pairs import PairDataset

    prefixes = [xp3_data / f"xp3_{language}" for language in LANGUAGES]
    result = run_tool_in_process("make_data_mixture.py", *prefixes, "--train-output", tmp_path / "train.txt",
                                 "--valid-fraction", "0.1", "--valid-output", tmp_path / "valid.txt",
                                 "--temperature", "3", "--budget-tokens", "1e6")
    (train,) = shlex.split((tmp_path / "train.txt").read_text())
    group = parse_weighted_split_group(train, "train")
    sizes = [sum(Path(f"{p}_{key}_document.bin").stat().st_size for key in ("inputs", "targets")) for p in prefixes]
    scaled = [size ** (1 / 3) for size in sizes]
    assert [d.weight for d in group.datasets] == pytest.approx([w / sum(scaled) for w in scaled], rel=1e-5)
    by_size = [size / sum(sizes) for size in sizes]
    small = sizes.index(min(sizes))
    assert group.datasets[small].weight > by_size[small]  # the small language sampled more than by size
    for prefix, weight in zip(prefixes, (d.weight for d in group.datasets)):
        pairs = PairDataset(prefix)
        train_pairs = int(len(pairs) * 0.9)
        tokens = sum(int(pairs.input_sizes[i]) + int(pairs.target_sizes[i]) for i in range(len(pairs)))
        epochs = weight * 1e6 / (tokens * train_pairs / len(pairs))
        assert f"  {prefix.name}: {weight:.4%} of the tokens, {train_pairs:,} training pairs, {epochs:.2f} epochs" \
            in result.stdout
    refused = run_tool_in_process("make_data_mixture.py", *prefixes, "--train-output", tmp_path / "t.txt",
                                  "--temperature", "0", check=False)
    assert refused.returncode == 2 and "--temperature 0" in refused.stderr


def test_mixture_tool_names_a_missing_dataset_and_writes_nothing(xp3_data, tmp_path):
    result = run_tool("make_data_mixture.py", xp3_data / "xp3_fr", xp3_data / "xp3_de",
                      "--train-output", tmp_path / "train.txt", check=False)
    assert result.returncode == 2
    assert "xp3_de_inputs_document" in result.stderr
    assert not (tmp_path / "train.txt").exists()


def _metadata_only_base(folder: Path, config) -> None:
    """What a LoRA dry run reads of its frozen model: the `latest` pointer, the tag folder and
    the metadata (the weights are read at launch only)."""
    from megatron.checkpoint.layout import write_latest
    from megatron.checkpoint.metadata import CheckpointMetadata, write_metadata

    (folder / "global_step0").mkdir(parents=True)
    write_metadata(folder, CheckpointMetadata(config, config.to_hf(config.vocab_size).to_dict(), 1, 1, "bloom"))
    write_latest(folder, "global_step0")


def _dry_run(recipe: str, demo_dir: Path, data: Path, tmp_path: Path) -> str:
    if recipe.endswith("-lora"):  # BLOOM-176B, converted (its metadata alone)
        from megatron.models.bloom.config import BloomModelConfig

        _metadata_only_base(tmp_path / "init", BloomModelConfig(vocab_size=V, hidden_size=14336, num_layers=70,
                                                                num_heads=112))
    env = dict(os.environ, DRY_RUN="1", TOKENIZER=str(demo_dir / "tokenizer"), DATA_DIR=str(data),
               REPO_DIR=str(REPO), PYTHON=sys.executable, PYTHONWARNINGS="ignore",
               INIT_CHECKPOINT=str(tmp_path / "init"), CHECKPOINT_DIR=str(tmp_path / "run"),
               LOG_DIR=str(tmp_path / "logs"))
    for name in ("SLURM_JOB_NUM_NODES", "NNODES", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    result = subprocess.run(["bash", SLURM / f"{recipe}.slurm"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "run").exists() and not (tmp_path / "logs").exists()  # nothing launched
    return result.stdout


GIB = 2**30
S, V = 2048, 250880  # rows of 2,048 tokens; the vocabulary padded to 250,880 (--pad-vocab-size-to)


def _activations(h: int, t: int, b: int, blocks: int, in_flight: int, split: float = 24) -> float:
    """Bytes in half precision with every block recomputed: each block's input (2sbh) and the
    stage's output per micro-batch in flight, and one block's full set during its backward,
    sbh(10 + split/t) (BLOOM's 24: q, k, v, the projection's input, the MLP's 4h twice), with no
    attention scores held (the Triton attention kernel)."""
    sbh = S * b * h
    return (blocks + 1) * in_flight * 2 * sbh + sbh * (10 + split / t)


def _llama(h: int, a: int, g: int, f: int, layers: int, vocab: int, t: int, d: int = 128) -> tuple[int, float]:
    """A Llama-family model's parameters on one of t tensor ranks (q and o a*d*h each, k and v
    g*d*h each, SwiGLU 3hf, an untied head as large as the embedding; norms negligible), and its
    block's split activations per token in units of h x 2 bytes: q and the projection's input
    2ad each, k and v 2gd each, SwiGLU's gate, up, silu(gate) and product 8f."""
    block = 2 * a * d * h + 2 * g * d * h + 3 * h * f
    return (layers * block + 2 * vocab * h) // t, (4 * a * d + 4 * g * d + 8 * f) / h


# Each recipe's peak memory per GPU, derived by hand (GiB). P parameters on a GPU cost 2P for the
# fp16/bf16 weights, 2P for fp16 gradients (4P in bf16: DeepSpeed keeps them in fp32) and 12P/d for
# Adam's moments and the fp32 master weights under ZeRO-1 over d data-parallel ranks. A block has
# 12h^2/t matrix parameters (biases and norms are negligible), the embedding Vh/t; the chunked LM
# head holds one 1 GiB chunk of fp32 logits.
EXPECTED_PEAK_GIB = {
    # TP1 PP1 DP16, h=1024, 24 blocks, micro-batch 1: P = 24*12h^2 + Vh = 559M
    "bloomz-560m": ((24 * 12 * 1024**2 + V * 1024) * (2 + 2 + 12 / 16) + _activations(1024, 1, 1, 24, 1)
                    + GIB) / GIB,
    # TP2 PP2 DP8, h=2048: the last stage (12 blocks, the tied embedding's copy, the LM head chunk)
    "bloomz-1b7": ((12 * 12 * 2048**2 / 2 + V * 2048 / 2) * (2 + 2 + 12 / 8) + _activations(2048, 2, 1, 12, 1)
                   + GIB) / GIB,
    # TP1 PP1 DP64, h=4096, 30 blocks, micro-batch 4
    "bloomz-7b1": ((30 * 12 * 4096**2 + V * 4096) * (2 + 2 + 12 / 64) + _activations(4096, 1, 4, 30, 1)
                   + GIB) / GIB,
    # TP1 PP72 DP4 bf16: stage 0 holds the embedding (Vh) and the outputs of its 72 micro-batches in
    # flight under 1F1B
    "bloomz-176b": (V * 14336 * (2 + 4 + 12 / 4) + 72 * 2 * S * 14336) / GIB,
    # LoRA r16 on every linear layer, TP1 PP8 DP1 bf16: stage 0 holds the embedding and 8 frozen
    # blocks (2 bytes a parameter), the blocks' adapters, r*(h + 3h) + r*(h + h) + r*(h + 4h) +
    # r*(4h + h) = 16rh a block, with their fp32 gradients and Adam state (4 + 12 bytes, DP 1),
    # and 8 micro-batches in flight
    "bloomz-176b-lora": ((V * 14336 + 8 * 12 * 14336**2) * 2 + 8 * 16 * 16 * 14336 * (2 + 4 + 12)
                         + _activations(14336, 1, 1, 8, 8)) / GIB,
}
# The Llama-family recipes, bf16 (4P for the gradients), TP2 PP1 DP32, micro-batch 2
LLAMA_3_1_8B = _llama(h=4096, a=32, g=8, f=14336, layers=32, vocab=128256, t=2)
QWEN2_5_7B = _llama(h=3584, a=28, g=4, f=18944, layers=28, vocab=152064, t=2)
EXPECTED_PEAK_GIB |= {
    "llama-3.1-8b-xp3": (LLAMA_3_1_8B[0] * (2 + 4 + 12 / 32) + _activations(4096, 2, 2, 32, 1, LLAMA_3_1_8B[1])
                         + GIB) / GIB,
    "qwen2.5-7b-xp3": (QWEN2_5_7B[0] * (2 + 4 + 12 / 32) + _activations(3584, 2, 2, 28, 1, QWEN2_5_7B[1])
                       + GIB) / GIB,
}

RECIPES = {  # recipe -> (world line, gradient accumulation, stage lines expected)
    "bloomz-560m": ("world size 16 = TP 1 x PP 1 x DP 16", 64, ["stage 0 ", "embedding + 24 blocks + final norm + LM head"]),
    "bloomz-1b7": ("world size 32 = TP 2 x PP 2 x DP 8", 256, ["embedding + 12 blocks", "12 blocks + final norm + LM head"]),
    "bloomz-7b1": ("world size 64 = TP 1 x PP 1 x DP 64", 8, ["embedding + 30 blocks + final norm + LM head"]),
    "bloomz-176b": ("world size 288 = TP 1 x PP 72 x DP 4", 512,
                    ["stage 0 ", " embedding\n", "stages 1-69 ", "1 block each", "stage 70 ", "1 block + final norm", "stage 71 ", "LM head\n"]),
    "bloomz-176b-lora": ("world size 8 = TP 1 x PP 8 x DP 1", 2048,
                         ["stage 0 ", "+ 29.36M LoRA  embedding + 8 blocks\n", "stages 1-6 ", "9 blocks each",
                          "stage 7 ", "8 blocks + final norm + LM head",
                          "LoRA: rank 16, alpha 32 (scaling alpha/r = 2), dropout 0.05, targets query_key_value "
                          "dense dense_h_to_4h dense_4h_to_h: 256,901,120 adapter parameters"]),
    "llama-3.1-8b-xp3": ("world size 64 = TP 2 x PP 1 x DP 32", 32,
                         ["embedding + 32 blocks + final norm + LM head", "llama, 32 layers, hidden 4096, 32 heads over "
                          "8 KV heads, vocabulary 128256, LM head untied: 8.03B parameters"]),
    "qwen2.5-7b-xp3": ("world size 64 = TP 2 x PP 1 x DP 32", 32,
                       ["embedding + 28 blocks + final norm + LM head", "llama, 28 layers, hidden 3584, 28 heads over "
                        "4 KV heads, vocabulary 152064, LM head untied: 7.62B parameters"]),
}
FUSIONS = {"bloom": "compiled bias + GeLU on, bias + dropout + residual on", "llama": "bias + dropout + residual on"}


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=[] if r in ("bloomz-1b7", "llama-3.1-8b-xp3")
                                                    else pytest.mark.slow) for r in RECIPES])
def test_recipe_dry_run_prints_the_layout_and_memory(recipe, demo_dir, xp3_data, tmp_path):
    out = _dry_run(recipe, demo_dir, xp3_data, tmp_path)
    world, accumulation, stage_lines = RECIPES[recipe]
    assert out.startswith("dry run: nothing launched")
    assert world in out
    assert f"gradient accumulation {accumulation} = global" in out
    assert "rows of 2048 tokens" in out
    # a GPU launch picks the fused paths, attention dropout 0.1 included (the Triton kernel)
    family = "bloom" if recipe.startswith("bloomz") else "llama"
    assert f"attention triton, LM head loss chunked, {FUSIONS[family]}, PipelineModule" in out
    if recipe.endswith("-lora"):  # the frozen model: the converted checkpoint's weights
        assert f"starts from: the weights of {tmp_path / 'init'}/global_step0" in out
    else:
        assert "starts from: random initialisation" in out  # no converted checkpoint in this test
    assert "train: 2 datasets" in out and "valid_xp3_fr: 1 datasets" in out
    for expected in stage_lines:
        assert expected in out, out
    peak = float(re.search(r"peak estimate: ([\d.]+) GiB", out).group(1))
    assert peak == pytest.approx(EXPECTED_PEAK_GIB[recipe], rel=0.1), out
    assert peak < 80 * 0.85  # each recipe fits an 80 GB GPU, with room for the CUDA context


def test_lora_plan_keeps_the_frozen_weights_and_trains_the_adapters_alone(demo_dir, xp3_data, tmp_path, capsys,
                                                                          monkeypatch):
    """The dry run of LoRA r8 (all four targets) on a small BLOOM (4 blocks, h = 1024, 65,536
    vocabulary rows) at TP 2 x PP 1 x DP 4, bf16, ZeRO-1, derived by hand to the byte: the model's
    P parameters on a GPU stay as weights (2P, not sharded by ZeRO-1), and the adapters' A join
    them; gradients (4A: fp32) and Adam with its fp32 master weights (12A / DP) are the adapters'
    alone. By PEFT's rule a block's adapters hold r*h + r*3h/2 (query_key_value, column-parallel:
    B split), r*h/2 + r*h (dense, row-parallel: A split), r*h + r*4h/2 (dense_h_to_4h) and
    r*4h/2 + r*h (dense_4h_to_h) on a GPU, 10rh; 16rh whole. The activations are full
    finetuning's."""
    import finetune_xp3

    from megatron.models.bloom.config import BloomModelConfig
    from megatron.train.launch_plan import stages

    h, layers, vocab, r, dp = 1024, 4, 65536, 8, 4
    _metadata_only_base(tmp_path / "base", BloomModelConfig(vocab_size=vocab, hidden_size=h, num_layers=layers,
                                                            num_heads=16))
    monkeypatch.setenv("WORLD_SIZE", "8")
    full = ["--tensor-model-parallel-size", "2", "--tokenizer-name-or-path", demo_dir / "tokenizer",
            "--seq-length", "2048", "--micro-batch-size", "1", "--global-batch-size", "8", "--train-iters", "10",
            "--bf16", "--checkpoint-activations", "--lr", "1e-4", "--zero-stage", "1",
            "--train-weighted-split-paths-path", xp3_data / "xp3_train.txt", "--load", tmp_path / "base", "--dry-run"]
    lora = [*full, "--lora-rank", str(r), "--lora-alpha", "16"]
    train, spec, _, _, meta, _, _ = finetune_xp3.prepare(list(map(str, lora)))
    (stage,) = stages(train, spec, meta.model, meta.lora)
    # P on a GPU: the embedding (Vh/2 + its norm 2h), each block (12h^2/2 matrices; biases 3h/2,
    # h, 4h/2, h; norms 4h) and the final norm (2h)
    p = vocab * h // 2 + 2 * h + layers * (6 * h * h + 19 * h // 2) + 2 * h
    a = layers * 10 * r * h
    assert (stage.parameters, stage.adapters) == (p, a)
    assert stage.memory["weights"] == 2 * (p + a)
    assert stage.memory["gradients"] == 4 * a
    assert stage.memory["optimizer"] == 12 * a / dp
    (whole,) = stages(*finetune_xp3.prepare(list(map(str, full)))[:2], meta.model)
    assert (whole.memory["gradients"], whole.memory["optimizer"]) == (4 * p, 12 * p / dp)
    assert (stage.memory["activations"], stage.memory["logits"]) == (whole.memory["activations"], whole.memory["logits"])

    capsys.readouterr()
    assert finetune_xp3.main(list(map(str, lora))) == 0
    out = capsys.readouterr().out
    assert (f"LoRA: rank 8, alpha 16 (scaling alpha/r = 2), dropout 0, targets query_key_value dense dense_h_to_4h "
            f"dense_4h_to_h: {layers * 16 * r * h:,} adapter parameters") in out
    assert f"starts from: the weights of {tmp_path / 'base'}/global_step0" in out
    assert f" + {a / 1e6:.2f}M LoRA  embedding + 4 blocks + final norm + LM head" in out
    peak = float(re.search(r"peak estimate: ([\d.]+) GiB", out).group(1))
    assert peak == pytest.approx(sum(stage.memory.values()) / GIB, abs=0.006)
