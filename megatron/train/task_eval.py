"""Zero-shot evaluation (`megatron/evaluation`) on a DeepSpeed engine, the train loop's and
`tools/evaluate.py`'s alike: the packed rows of every (inputs, choice) pair split over the
data-parallel ranks, micro-batch by micro-batch through the whole model or every pipeline stage,
each label's log-probability summed per pair on the last stage, the sums shared with every rank,
then rank classification and its aggregates."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.runtime.pipe.engine import PipelineEngine
from tqdm import tqdm

from megatron.evaluation.accuracy import accuracy_report, predictions
from megatron.evaluation.choice_rows import ChoiceRows, encode_choices
from megatron.evaluation.examples import ChoiceExample
from megatron.train.data_iterators import pipeline_micro_batch, to_device
from megatron.train.distributed import collective_device
from megatron.utils.megatron_core import parallel_state


@dataclass(frozen=True)
class TaskResults:
    """What an evaluation gives: the aggregates, and each example's scores and prediction."""

    report: dict  # `accuracy.accuracy_report`
    scores: list[list[float]]  # per example, per choice (divided by token counts with length_normalize)
    predictions: list[int]


class ZeroShotTasks:
    """Examples tokenized and packed once, for rows of `seq_length + 1` tokens; with `prepend_bos`
    each example's inputs begin with the tokenizer's BOS token (`encode_choices`); with
    `finetuned_languages` the report groups languages by it (`accuracy_report`)."""

    def __init__(self, examples: Sequence[ChoiceExample], tokenizer, seq_length: int, length_normalize: bool,
                 *, prepend_bos: bool = False, finetuned_languages: Mapping[str, Collection[str]] | None = None):
        self.examples = list(examples)
        self.encoded = encode_choices(self.examples, tokenizer, seq_length, prepend_bos)
        self.rows = ChoiceRows(self.encoded, tokenizer.pad)
        self.length_normalize = length_normalize
        self.finetuned_languages = finetuned_languages

    def results(self, pair_scores: np.ndarray) -> TaskResults:
        scores, predicted = predictions(pair_scores, self.encoded.choice_lengths(), self.encoded.first_pair,
                                        self.length_normalize)
        return TaskResults(accuracy_report(self.examples, predicted, self.finetuned_languages), scores, predicted)


def _log_probs(engine, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor] | None:
    """Each micro-batch's label log-probabilities on the last stage (None on the others)."""
    if isinstance(engine, PipelineEngine):
        loss_fn = engine.module.loss_fn
        loss_fn.scoring = True
        # eval_batch adds every output into `total_loss` and (unlike train_batch) never resets it:
        # a validation's scalar and these [micro, seq] tensors must not meet there
        # and with a DeepSpeed monitor on it broadcasts and logs the outputs as if they were one loss
        engine.total_loss, monitor = None, engine.monitor.enabled
        engine.monitor.enabled = False
        try:
            return engine.eval_batch(map(pipeline_micro_batch, batches), reduce_output=None, bcast_loss=False,
                                     num_micro_batches=len(batches))
        finally:
            loss_fn.scoring, engine.total_loss, engine.monitor.enabled = False, None, monitor
    return [engine(to_device(batch, engine.device), score=True) for batch in batches]


@torch.no_grad()
def score_pairs(engine, rows: ChoiceRows, micro: int, show_progress: bool = False) -> np.ndarray:
    """The summed log-probability of every pair of `rows`, on every rank. Data-parallel rank r
    takes micro-batch r of every `DP` in turn; the last micro-batches are padded with empty rows."""
    engine.eval()
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    stages = parallel_state.get_pipeline_model_parallel_world_size()
    per_call = 2 * stages if isinstance(engine, PipelineEngine) else 1  # micro-batches that fill the pipeline
    calls = math.ceil(math.ceil(len(rows) / (micro * dp)) / per_call)
    contributes = (parallel_state.get_pipeline_model_parallel_rank() == stages - 1
                   and parallel_state.get_tensor_model_parallel_rank() == 0)
    sums = torch.zeros(rows.encoded.num_pairs, dtype=torch.float64)
    for call in tqdm(range(calls), desc="scoring", unit="call", disable=not show_progress):
        row_ids = [[((call * per_call + k) * dp + dp_rank) * micro + j for j in range(micro)] for k in range(per_call)]
        batches = [rows.batch(ids) for ids in row_ids]
        outputs = _log_probs(engine, batches)
        if outputs is None or not contributes:
            continue
        for ids, batch, log_probs in zip(row_ids, batches, outputs):
            pairs, values = rows.choice_sums(ids, log_probs, batch["segment_ids"])
            sums[torch.from_numpy(pairs)] = torch.from_numpy(values)
    sums = sums.to(collective_device())
    dist.all_reduce(sums)
    return sums.cpu().numpy()
