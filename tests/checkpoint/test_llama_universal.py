"""The Llama family moved to another layout with its optimizer state on DeepSpeed's universal
checkpoints (torchrun, gloo, real DeepSpeed and its `ds_to_universal`): a TP2 x PP2 run of a
random Llama from Megatron's flags (4 heads over 2 KV heads, SwiGLU, untied LM head), made
universal at iteration 4, resumes at TP1 x PP2 x DP2 and at TP2 x PP1 x DP2 on the uninterrupted
curve (the fused gate/up re-split as two sub-parameters, the untied head as a vocabulary tensor);
and so does a tied one with Megatron's default biases (its embedding on both pipeline ends; q/k/v
and gate/up biases split, the row-parallel biases replicated)."""

from __future__ import annotations

import pytest
from helpers.finetune_runs import finetune, scalars, tiny_model_args
from helpers.paths import run_tool_in_process

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

TP2, PP2 = ["--tensor-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "2"]
LLAMA = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--position-embedding-type", "rope",
         "--normalization", "RMSNorm", "--swiglu", "--group-query-attention", "--num-query-groups", "2",
         "--ffn-hidden-size", "48", "--rotary-base", "1000"]


@pytest.fixture(scope="module")
def runs(demo_dir, demo_data, tmp_path_factory):
    """tied or untied -> (its flags, the TP2 x PP2 run folder with `latest_universal` at step 4,
    its TensorBoard folder); each made on first use."""
    root = tmp_path_factory.mktemp("llama_universal")
    data = demo_data
    made = {}

    def get(kind: str):
        if kind not in made:
            args = [*tiny_model_args(demo_dir, data), *LLAMA, "--micro-batch-size", "2", "--global-batch-size", "8",
                    "--lr", "2e-3", "--lr-warmup-iters", "2", "--hidden-dropout", "0", "--attention-dropout", "0",
                    "--clip-grad", "0.3", "--eval-iters", "0", "--zero-stage", "1", "--attention-backend", "reference",
                    "--lm-head-loss", "reference", "--no-bias-dropout-fusion",
                    *(["--untie-embeddings-and-output-weights", "--disable-bias-linear"] if kind == "untied" else [])]
            finetune(4, [*args, *TP2, *PP2, "--train-iters", "8", "--save-interval", "4", "--save", root / kind,
                         "--tensorboard-dir", root / f"tb_{kind}"])
            run_tool_in_process("convert_checkpoint/to_universal.py", "--checkpoint-dir", root / kind,
                                "--tag", "global_step4")
            made[kind] = (args, root / kind, root / f"tb_{kind}")
        return made[kind]

    return get


@pytest.mark.parametrize("kind, nprocs, layout", [("untied", 4, PP2), ("untied", 4, TP2), ("tied", 4, PP2)],
                         ids=["untied_tp1_pp2_dp2", "untied_tp2_pp1_dp2", "tied_tp1_pp2_dp2"])
def test_universal_checkpoint_resumes_at_another_layout_on_the_same_curve(runs, tmp_path, kind, nprocs, layout):
    args, run, tb = runs(kind)
    out = finetune(nprocs, [*args, *layout, "--train-iters", "8", "--load", run, "--universal-checkpoint",
                            "--tensorboard-dir", tmp_path / "tb"])
    assert "from universal" in out.stdout and "training from iteration 4 to 8" in out.stdout
    whole = {name: scalars(tb, name) for name in ("lm loss", "grad-norm")}
    for name, values in whole.items():
        resumed = scalars(tmp_path / "tb", name)
        assert sorted(resumed) == [5, 6, 7, 8]
        for step in range(5, 9):
            assert resumed[step] == pytest.approx(values[step], rel=1e-5), (name, step)
