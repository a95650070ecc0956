"""The configuration of a run: small frozen groups, built by keyword from the parsed flags
(`arguments.py`) and passed explicitly; nothing global."""

from __future__ import annotations

from dataclasses import dataclass, fields

from megatron.data.data_config import DataConfig


@dataclass(frozen=True)
class ArchitectureFlag:
    """A Megatron architecture flag as a field of the family's model config: its value, and
    whether the command line gave it (a checkpoint in `--load` must then agree) or it is
    Megatron's default for a run from random initialisation."""

    flag: str
    field: str
    value: object
    given: bool


@dataclass(frozen=True)
class ModelConfig:
    """The model flags. The shape may be None when it comes from `--load`'s checkpoint; the
    options below it apply to the model however it is started."""

    num_layers: int | None
    hidden_size: int | None
    num_heads: int | None
    init_method_std: float
    make_vocab_size_divisible_by: int
    pad_vocab_size_to: int | None
    checkpoint_activations: bool
    tokenizer: str
    # the family the architecture flags name (`--position-embedding-type`, `--normalization`,
    # `--swiglu`), None when none is given; and the family's shape flags beyond the above
    family: str | None
    architecture: tuple[ArchitectureFlag, ...]
    # options of the family's model config itself, whatever the model's source (a family takes
    # those its config has)
    hidden_dropout: float
    attention_dropout: float
    prefix_lm: bool
    attention_backend: str  # "reference", "flex" or "triton"
    lm_head_loss: str  # "reference" or "chunked"
    bias_gelu_fusion: bool
    bias_dropout_fusion: bool

    def options(self) -> dict:
        """The fields from `hidden_dropout` on, as keyword arguments of the model config."""
        names = [f.name for f in fields(self)]
        return {name: getattr(self, name) for name in names[names.index("hidden_dropout"):]}


@dataclass(frozen=True)
class ParallelConfig:
    tensor: int
    pipeline: int
    data: int
    zero_stage: int
    partition_method: str
    timeout_minutes: float
    backend: str | None  # None: NCCL with GPUs, gloo without

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline * self.data

    @property
    def uses_pipeline(self) -> bool:
        """ZeRO 0/1 run on DeepSpeed's `PipelineModule` (any PP); ZeRO-2/3, which its pipeline
        engine does not support, on the whole model."""
        return self.zero_stage <= 1


@dataclass(frozen=True)
class BatchConfig:
    micro: int
    global_batch: int
    gradient_accumulation: int
    train_samples: int
    num_workers: int


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float
    min_lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    clip_grad: float
    decay_style: str
    warmup_samples: int
    decay_samples: int


@dataclass(frozen=True)
class CheckpointConfig:
    save: str | None
    save_interval: int | None
    load: str | None
    no_load_optim: bool
    no_load_rng: bool
    reset_progress: bool
    finetune: bool
    fallback: bool
    universal: bool  # --load holds a universal checkpoint (any TP/PP/DP)
    save_retain: int | None = None  # keep this many newest complete checkpoints (None: all)


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases as Megatron-LM's flags name it (`--wandb-project` turns it on)."""

    project: str
    exp_name: str | None
    save_dir: str | None
    entity: str | None


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int
    eval_interval: int
    eval_iters: int
    tensorboard_dir: str | None
    exit_interval: int | None
    exit_duration_minutes: float | None
    kill_switch_path: str | None
    exit_signal_handler: bool
    wandb: WandbConfig | None = None


@dataclass(frozen=True)
class EvalTasksConfig:
    """Zero-shot evaluation during training (`--eval-tasks`): the multiple-choice examples' file
    or folder, how often, the scoring rule, and the tokenization rule."""

    path: str
    interval: int
    length_normalize: bool
    prepend_bos: bool  # the tokenizer's BOS before each prompt's inputs, as the training data have it


@dataclass(frozen=True)
class LoraFlags:
    """LoRA as the flags ask for it (`--lora-*`); what is not given is None, taken from the
    adapters of `--lora-load` or a relaunch's checkpoint, else defaulted by the family
    (`load_plan.lora_settings`)."""

    rank: int | None
    alpha: float | None
    dropout: float | None
    targets: tuple[str, ...] | None
    rslora: bool | None
    load: str | None  # --lora-load: adapters (weights only) of one of our LoRA checkpoints


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    parallel: ParallelConfig
    batch: BatchConfig
    optimizer: OptimizerConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    data: DataConfig
    precision: str  # "fp32", "bf16" or "fp16"
    seed: int
    norm_target_loss: bool
    nonfinite_loss: str  # "stop" or "skip"
    deepspeed_config: str | None  # the JSON's path, for messages
    deepspeed_json: dict  # its content, read once (empty without --deepspeed_config)
    dry_run: bool
    eval_tasks: EvalTasksConfig | None = None
    lora: LoraFlags | None = None  # None: full finetuning

    @property
    def train_iters(self) -> int:
        return self.batch.train_samples // self.batch.global_batch
