"""Our BLOOM against transformers' `BloomForCausalLM` (eager attention), in fp32: logits at
TP=1 and TP=2 (two gloo processes) for head counts that are and are not powers of two, a packed
row of three pairs against each pair alone, and loss and gradients at TP=2 against TP=1. The tiny
models' attention depends on content (`helpers/tiny.py`): zeroing one head's query moves the
logits far beyond the tolerance, so the comparison sees attention, not only ALiBi."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from helpers.bloom_workers import parity_worker
from helpers.tiny import make_hf_model
from helpers.distributed import free_port

from megatron.models.common.alibi import alibi_slopes

HEADS = (4, 6)
LOGITS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def parity_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    folders = {}
    for heads in HEADS:
        folders[heads] = str(root / f"hf_{heads}")
        make_hf_model(folders[heads], heads)
    out = str(root / "results.pt")
    mp.spawn(parity_worker, args=(2, free_port(), folders, out), nprocs=2)
    return torch.load(out)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("tp", [1, 2])
def test_logits_match_transformers(parity_results, heads, tp):
    assert parity_results[f"heads{heads}_tp{tp}_logits"] < LOGITS_TOLERANCE


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("tp", [1, 2])
def test_packed_pairs_match_each_pair_alone(parity_results, heads, tp):
    assert parity_results[f"heads{heads}_tp{tp}_packed"] < LOGITS_TOLERANCE


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("tp", [1, 2])
def test_one_heads_query_moves_the_logits_far_beyond_the_tolerance(parity_results, heads, tp):
    """Zeroing head 0's query in block 1 of our model changes its logits by over 100x the
    tolerance: a bug in the attention scores cannot hide below it."""
    assert parity_results[f"heads{heads}_tp{tp}_zeroed_query"] > 100 * LOGITS_TOLERANCE


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("heads", HEADS)
def test_loss_and_gradients_at_tp2_match_tp1(parity_results, heads):
    assert parity_results[f"heads{heads}_loss_tp2_vs_tp1"] < 1e-6
    assert parity_results[f"heads{heads}_grad_scale"] > 1e-4  # the gradients are not trivially zero
    assert parity_results[f"heads{heads}_grad_tp2_vs_tp1"] < 1e-6


@pytest.mark.parametrize("heads", [1, 2, 4, 5, 6, 8, 12, 16, 24, 112])
def test_alibi_slopes_match_transformers(heads):
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    assert torch.equal(alibi_slopes(heads), _get_alibi_slopes(heads, torch.device("cpu")))
