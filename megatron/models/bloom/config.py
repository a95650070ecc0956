"""BLOOM's shape and options (`BloomModelConfig`), from flags or from a HF `BloomConfig`, and the
model FLOPs per token that throughput and MFU are reported in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class BloomModelConfig:
    vocab_size: int  # padded: rows of the embedding matrix
    hidden_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    attention_backend: str = "reference"  # or "flex" (models/common/attention.py)
    lm_head_loss: str = "reference"  # full logits + vocab-parallel CE, or "chunked" (models/common/loss.py)
    bias_gelu_fusion: bool = False  # bias + GeLU compiled (kernels/fused_bias.py)
    bias_dropout_fusion: bool = False  # bias + dropout + residual compiled
    prefix_lm: bool = False  # bidirectional attention among a pair's input tokens

    # HF config keys the export keeps from the checkpoint's original config
    HF_KEPT_KEYS: ClassVar[tuple[str, ...]] = ("bos_token_id", "eos_token_id", "pad_token_id",
                                               "apply_residual_connection_post_layernorm")
    hf_architecture: ClassVar[str] = "BloomForCausalLM"
    tie_word_embeddings: ClassVar[bool] = True  # the LM head is the embeddings' weight

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"--hidden-size {self.hidden_size} is not divisible by "
                             f"--num-attention-heads {self.num_heads}")

    @property
    def num_kv_heads(self) -> int:
        """Every head has its own keys and values (no grouped-query attention)."""
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def block_activations(self, tp_size: int) -> float:
        """A block's saved activations per token and hidden unit, in bytes (half precision),
        without the attention scores (Korthikanti et al. 2022): norm and branch inputs and dropout masks
        (10, replicated), q, k, v, the output projection's input and the MLP's 4h twice (24, split
        over TP)."""
        return 10 + 24 / tp_size

    def check_sequence_length(self, seq_length: int) -> None:
        """ALiBi has no learned positions: any row length works."""

    def check_tensor_parallel(self, tp_size: int) -> None:
        if self.num_heads % tp_size:
            raise ValueError(f"--tensor-model-parallel-size {tp_size} does not divide the "
                             f"{self.num_heads} attention heads")
        if self.vocab_size % tp_size:
            raise ValueError(f"the padded vocabulary ({self.vocab_size}) is not divisible by "
                             f"--tensor-model-parallel-size {tp_size}")

    @staticmethod
    def read_hf_config(folder):
        """The transformers `BloomConfig` of a HF model folder."""
        from transformers import BloomConfig

        return BloomConfig.from_pretrained(folder)

    @classmethod
    def from_hf(cls, hf_config, vocab_size: int | None = None, **options) -> "BloomModelConfig":
        """From a transformers `BloomConfig`; `vocab_size` overrides its (padded) size."""
        return cls(
            vocab_size=vocab_size or hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            num_layers=hf_config.n_layer,
            num_heads=hf_config.n_head,
            layer_norm_eps=hf_config.layer_norm_epsilon,
            init_method_std=hf_config.initializer_range,
            **options,
        )

    def to_hf(self, vocab_size: int, **extra):
        """A transformers `BloomConfig` for `vocab_size` (the unpadded vocabulary)."""
        from transformers import BloomConfig

        return BloomConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            n_layer=self.num_layers,
            n_head=self.num_heads,
            layer_norm_epsilon=self.layer_norm_eps,
            initializer_range=self.init_method_std,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            **extra,
        )


FLOPS_FORMULA = "72*l*h^2*(1 + s/(6h) + V/(12*l*h)) per token"


def model_flops_per_token(config: BloomModelConfig, seq_length: int) -> float:
    """Narayanan et al. 2021, without recomputation, full causal attention over the row:
    6 x parameters of the matmuls, plus attention scores and values, plus the LM head, for
    forward and backward (`FLOPS_FORMULA`, with the padded vocabulary V)."""
    l, h, v = config.num_layers, config.hidden_size, config.vocab_size
    return 72.0 * l * h * h * (1.0 + seq_length / (6.0 * h) + v / (12.0 * l * h))
