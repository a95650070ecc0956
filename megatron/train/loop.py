"""The train loop: one global batch per iteration, the LR set before each step, the log line and
TensorBoard (and W&B) scalars every `--log-interval` (with fp16, DeepSpeed's loss scale, and a warning while
it sits at its minimum), validation per named group (and the zero-shot
`--eval-tasks`) before the first step of a fresh run, every `--eval-interval` (`--eval-tasks-interval`)
and after the last step,
checkpoints every `--save-interval`, and the exit conditions (`--exit-interval`,
`--exit-duration-in-mins`, `--kill-switch-path`, SIGTERM/SIGUSR1 with `--exit-signal-handler`, a
non-finite loss). Stop conditions are agreed by all ranks in one all-reduce per iteration."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time

import torch
import torch.distributed as dist

from megatron.checkpoint.metadata import CheckpointMetadata
from megatron.train.checkpointing import save_checkpoint
from megatron.train.config import TrainConfig
from megatron.train.data_iterators import TargetTokenCounter, micro_batches
from megatron.train.distributed import collective_device
from megatron.train.engine import TrainingEngine
from megatron.train.lr_schedule import LRSchedule
from megatron.train.metrics import ScalarLog, TensorBoard, WandB, memory_gib, peak_tflops
from megatron.train.progress import TrainingProgress
from megatron.train.task_eval import ZeroShotTasks
from megatron.utils.megatron_core import parallel_state


class NonFiniteLoss(RuntimeError):
    pass


def log(message: str) -> None:
    """Printed once, by the last rank (the last pipeline stage, which holds the loss)."""
    if dist.get_rank() == dist.get_world_size() - 1:
        print(message, flush=True)


def _all_ranks_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


@dataclasses.dataclass
class Window:
    """What happened since the last log line."""

    start: float
    iterations: int = 0
    losses: float = 0.0
    finite: int = 0
    target_tokens: float = 0.0


class Trainer:
    def __init__(self, train: TrainConfig, engine: TrainingEngine, train_data, valid_data: dict,
                 progress: TrainingProgress, meta: CheckpointMetadata, tasks: ZeroShotTasks | None = None):
        self.train = train
        self.engine = engine
        self.train_data = train_data
        self.valid_data = valid_data
        self.tasks = tasks
        self.progress = progress
        self.schedule = LRSchedule(train.optimizer, train.batch.global_batch)
        self.schedule.load_state_dict(progress.lr_schedule)
        self.flops_per_token = engine.spec.flops_per_token(meta.model, train.data.seq_length)
        self.meta = meta
        self.scalar_log: ScalarLog | None = None
        self.start_time = time.time()
        self.signal_received: int | None = None

    def _on_signal(self, number, frame) -> None:
        self.signal_received = number

    def _batches(self, dataset, consumed: int):
        if not self.engine.loads_data:
            return None
        batch = self.train.batch
        return micro_batches(dataset, consumed, batch.micro, parallel_state.get_data_parallel_rank(),
                             self.train.parallel.data, batch.num_workers)

    def run(self) -> None:
        """Train to `--train-iters` (or an exit condition); raises NonFiniteLoss to stop. The
        scalar writers (TensorBoard, W&B) and (with `--exit-signal-handler`) the SIGTERM/SIGUSR1
        handlers live for this call only."""
        writes = dist.get_rank() == dist.get_world_size() - 1
        self.scalar_log = ScalarLog(TensorBoard(self.train.logging.tensorboard_dir, writes),
                                    WandB(self.train.logging.wandb, writes, dataclasses.asdict(self.train)))
        handled = (signal.SIGTERM, signal.SIGUSR1) if self.train.logging.exit_signal_handler else ()
        previous = {number: signal.signal(number, self._on_signal) for number in handled}
        try:
            self._run()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.scalar_log.close()

    def _run(self) -> None:
        train, progress = self.train, self.progress
        batches = self._batches(self.train_data, progress.consumed_samples)
        counter = TargetTokenCounter(batches) if batches is not None else None
        window = Window(time.time())
        last_saved = progress.iteration or None  # a resumed run does not rewrite what it resumed from
        log(f"training from iteration {progress.iteration} to {train.train_iters} "
            f"(consumed samples {progress.consumed_samples}); model FLOPs: {self.engine.spec.flops_formula}")
        if self.tasks is not None:
            encoded = self.tasks.encoded
            log(f"zero-shot tasks {train.eval_tasks.path}: {len(self.tasks.examples)} examples, {encoded.num_pairs} "
                f"choices packed into {len(self.tasks.rows)} rows; {encoded.truncated_pairs} (inputs, choice) pairs "
                f"longer than a row keep their last input tokens; tokenization: {encoded.tokenization}")
        if progress.iteration == 0:  # the starting point: the loaded model's (or random init's)
            self._evaluations("start")
        while progress.iteration < train.train_iters:
            lr = self.schedule.apply(self.engine.optimizer)
            loss, applied = self.engine.train_step(counter)
            progress.iteration += 1
            progress.consumed_samples += train.batch.global_batch
            progress.consumed_tokens += train.batch.global_batch * train.data.seq_length
            if applied:
                self.schedule.step()
            else:
                progress.skipped_iterations += 1
            counted = counter.take() if counter and self.engine.counts_tokens else 0
            target_tokens, stop_for_time, stop_for_switch, stop_for_signal = _all_ranks_sum(
                [counted, float(self._out_of_time()), float(self._kill_switch()),
                 float(self.signal_received is not None)])
            progress.consumed_target_tokens += int(target_tokens)
            window.iterations += 1
            window.target_tokens += target_tokens
            if math.isfinite(loss):
                window.losses += loss
                window.finite += 1
            else:
                self._non_finite(loss, applied)
            if progress.iteration % train.logging.log_interval == 0:
                self._log_line(window, lr)
                window = Window(time.time())
            self._evaluations("interval")
            exit_now = bool(stop_for_time or stop_for_switch or stop_for_signal) or (
                train.logging.exit_interval and progress.iteration % train.logging.exit_interval == 0)
            interval = train.checkpoint.save_interval
            if train.checkpoint.save and ((interval and progress.iteration % interval == 0) or exit_now):
                self.save()
                last_saved = progress.iteration
            if exit_now:
                reason = ("a signal" if stop_for_signal else "time limit" if stop_for_time
                          else "kill switch" if stop_for_switch else "exit interval")
                log(f"exiting at iteration {progress.iteration}: {reason}")
                return
        self._evaluations("end")
        if train.checkpoint.save and last_saved != progress.iteration:
            self.save()

    def save(self) -> None:
        self.progress.lr_schedule = self.schedule.state_dict()
        path = save_checkpoint(self.engine, self.train.checkpoint.save, self.progress, self.meta,
                               self.train.checkpoint.save_retain)
        log(f"saved checkpoint {path} at iteration {self.progress.iteration}")

    def _evaluations(self, when: str) -> None:
        """Validation and the zero-shot tasks at the `start`, at their `interval`, or at the `end`
        (unless this last iteration was one of their intervals)."""
        planned = [(self.train.logging.eval_interval, self.evaluate)] if self.valid_data else []
        if self.tasks is not None:
            planned.append((self.train.eval_tasks.interval, self.evaluate_tasks))
        for interval, run in planned:
            if when == "start" or (when == "interval") == (self.progress.iteration % interval == 0):
                run()

    def evaluate_tasks(self) -> dict:
        """Zero-shot accuracies of the live model: the median over prompts per dataset and
        language, each dataset's mean over languages, and their average."""
        report = self.tasks.results(self.engine.score(self.tasks)).report
        iteration = self.progress.iteration
        scalars = {f"eval-tasks/{dataset}/{language}": value
                   for dataset, languages in report["median_over_prompts"].items()
                   for language, value in languages.items()}
        scalars |= {f"eval-tasks/{dataset}": value for dataset, value in report["mean_over_languages"].items()}
        scalars["eval-tasks/average"] = report["average"]
        parts = " | ".join(f"{name.removeprefix('eval-tasks/')} {value:.4f}" for name, value in scalars.items())
        log(f" zero-shot accuracy at iteration {iteration} ({report['examples']} examples, median over prompts) | "
            f"{parts}")
        self.scalar_log.scalars(scalars, iteration)
        return report

    def evaluate(self) -> dict[str, float]:
        losses = {}
        for name, dataset in self.valid_data.items():
            batches = self._batches(dataset, 0)
            total = sum(self.engine.eval_step(batches) for _ in range(self.train.logging.eval_iters))
            losses[name] = total / self.train.logging.eval_iters
        iteration = self.progress.iteration
        parts = " | ".join(f"{name} lm loss {loss:.6E} | {name} PPL {math.exp(min(loss, 50)):.4E}"
                           for name, loss in losses.items())
        log(f" validation at iteration {iteration} | {parts}")
        self.scalar_log.scalars({f"lm-loss-validation/{name}": loss for name, loss in losses.items()}
                                 | {f"lm-loss-validation/{name} ppl": math.exp(min(loss, 50))
                                    for name, loss in losses.items()}, iteration)
        return losses

    def _non_finite(self, loss: float, applied: bool) -> None:
        iteration = self.progress.iteration
        if self.train.nonfinite_loss == "stop" or applied:
            why = "" if not applied else " and the optimizer step was applied, so the weights cannot be trusted"
            raise NonFiniteLoss(f"iteration {iteration}: the loss is {loss}{why}; stopping "
                                "(the last checkpoint is intact)")
        log(f"iteration {iteration}: the loss is {loss}; its optimizer step was skipped")

    def _log_line(self, window: Window, lr: float) -> None:
        train, progress = self.train, self.progress
        elapsed = max(time.time() - window.start, 1e-9)
        tokens_per_s = window.iterations * train.batch.global_batch * train.data.seq_length / elapsed
        tflops = self.flops_per_token * tokens_per_s / train.parallel.world_size / 1e12
        peak = peak_tflops(self.train.precision)
        mfu = tflops / peak if peak else None
        loss = window.losses / window.finite if window.finite else float("nan")
        grad_norm = self.engine.grad_norm()
        loss_scale = self.engine.loss_scale()
        memory_kind, memory = memory_gib()
        values = {
            "lm loss": loss, "learning-rate": lr, "grad-norm": grad_norm, "batch-size": train.batch.global_batch,
            "iteration-time": elapsed / window.iterations, "tokens-per-second": tokens_per_s,
            "target-tokens-per-second": window.target_tokens / elapsed, "tflops-per-device": tflops, "mfu": mfu,
            f"memory-{memory_kind}-gib": memory, "skipped-iterations": progress.skipped_iterations,
            "consumed-samples": progress.consumed_samples,
        }
        if loss_scale is not None:
            values["loss-scale"] = loss_scale[0]
        log(f" iteration {progress.iteration:8d}/{train.train_iters:8d} | consumed samples {progress.consumed_samples:12d}"
            f" | consumed tokens {progress.consumed_tokens:14d} | elapsed time per iteration (ms): "
            f"{1000 * elapsed / window.iterations:.1f} | learning rate {lr:.3E} | global batch size "
            f"{train.batch.global_batch:5d} | lm loss {loss:.6E}"
            f"{'' if loss_scale is None else f' | loss scale {loss_scale[0]:.1f}'} | grad norm "
            f"{'n/a' if grad_norm is None else f'{grad_norm:.3f}'} | skipped iterations {progress.skipped_iterations}"
            f" | tokens/s {tokens_per_s:.1f} | target tokens/s {window.target_tokens / elapsed:.1f}"
            f" | TFLOPs/device {tflops:.3f} | MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}"
            f" | memory ({memory_kind}) {memory:.2f} GiB")
        self.scalar_log.scalars(values, progress.iteration)
        if loss_scale is not None and loss_scale[0] == loss_scale[1]:
            log(f"warning: iteration {progress.iteration}: the fp16 loss scale is at DeepSpeed's minimum "
                f"({loss_scale[1]:g}, fp16.min_loss_scale): gradients overflow even barely scaled, and DeepSpeed "
                "stops the run once an overflow would take it lower. Lower --lr, check the data, or train in --bf16")

    def _out_of_time(self) -> bool:
        minutes = self.train.logging.exit_duration_minutes
        return minutes is not None and (time.time() - self.start_time) / 60 >= minutes

    def _kill_switch(self) -> bool:
        path = self.train.logging.kill_switch_path
        return bool(path) and os.path.exists(path)
