"""How far a run has got (`TrainingProgress`): the state saved as `progress.json` in each
checkpoint tag besides DeepSpeed's, so a resumed run continues the same data order and LR curve."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainingProgress:
    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0
    consumed_target_tokens: int = 0
    skipped_iterations: int = 0
    lr_schedule: dict = field(default_factory=lambda: {"num_samples": 0})
