"""The Llama family's shape and options (`LlamaModelConfig`): Llama 2/3.x, Qwen2/2.5 and Mistral
as transformers' `LlamaForCausalLM`, `Qwen2ForCausalLM` and `MistralForCausalLM` compute them
(RMSNorm, RoPE with `default` or `llama3` frequencies, grouped-query attention, SwiGLU, tied or
untied embeddings, the biases each has), read from a HF `config.json` or built from Megatron's
flags, and the model FLOPs per token.

What changes the maths and is not implemented is refused naming the config field
(`UnsupportedConfig`): another rope type, partial rotary, another activation, per-layer rope
parameters; a sliding window shorter than the sequence is refused at launch
(`check_sequence_length`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from megatron.models.common.rope import ROPE_TYPES, RopeScaling
from megatron.models.spec import UnsupportedConfig

HF_MODEL_TYPES = ("llama", "qwen2", "mistral")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class LlamaModelConfig:
    vocab_size: int  # padded: rows of the embedding matrix (and of an untied LM head)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int = 0  # 0: as many as the query heads (no grouping)
    head_dim: int = 0  # 0: hidden / heads
    ffn_hidden_size: int = 0  # 0: Megatron's SwiGLU rule, int(8h/3 / 64) * 64
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: str = "default"  # or "llama3", with the four parameters below
    rope_factor: float | None = None
    rope_low_freq_factor: float | None = None
    rope_high_freq_factor: float | None = None
    rope_original_max_positions: int | None = None
    tie_word_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2; Llama's attention_bias sets it and output_bias
    output_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral's or Qwen2's window; must cover the sequence
    hf_model_type: str = ""  # the HF class the export writes: llama, qwen2 or mistral ("": qwen2 for
    # q/k/v biases alone, as Qwen2 has them, else llama)
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    attention_backend: str = "reference"
    lm_head_loss: str = "reference"
    bias_dropout_fusion: bool = False  # dropout + residual (+ bias) compiled (kernels/fused_bias.py)
    prefix_lm: bool = False

    # HF config keys the export keeps from the checkpoint's original config (Qwen2's sliding-window
    # layers among them: which layers slide does not change the maths while the window covers
    # the rows, and is written back as it was)
    HF_KEPT_KEYS: ClassVar[tuple[str, ...]] = ("bos_token_id", "eos_token_id", "pad_token_id",
                                               "max_position_embeddings", "attention_dropout",
                                               "max_window_layers", "layer_types")

    def __post_init__(self):
        if not self.head_dim and self.hidden_size % self.num_heads:
            raise ValueError(f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                             f"{self.num_heads}: give --kv-channels")
        only_qkv_bias = self.qkv_bias and not (self.output_bias or self.mlp_bias)
        defaults = {"hf_model_type": self.hf_model_type or ("qwen2" if only_qkv_bias else "llama"),
                    "num_kv_heads": self.num_kv_heads or self.num_heads,
                    "head_dim": self.head_dim or (self.hidden_size // self.num_heads),
                    "ffn_hidden_size": self.ffn_hidden_size or int(4 * self.hidden_size * 2 / 3 / 64) * 64}
        for name, value in defaults.items():  # explicit in the checkpoint's metadata
            object.__setattr__(self, name, value)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"the {self.num_kv_heads} KV heads (num_key_value_heads, --num-query-groups) do not "
                             f"divide the {self.num_heads} attention heads")
        if self.rope_type not in ROPE_TYPES:
            raise UnsupportedConfig(f"rope_type {self.rope_type!r} is not implemented (only {list(ROPE_TYPES)})")
        if self.hf_model_type not in HF_MODEL_TYPES:
            raise UnsupportedConfig(f"model_type {self.hf_model_type!r}: this family covers {list(HF_MODEL_TYPES)}")

    @property
    def rope_scaling(self) -> RopeScaling | None:
        if self.rope_type != "llama3":
            return None
        return RopeScaling(self.rope_factor, self.rope_low_freq_factor, self.rope_high_freq_factor,
                           self.rope_original_max_positions)

    @property
    def hf_architecture(self) -> str:
        return _ARCHITECTURES[self.hf_model_type]

    def check_tensor_parallel(self, tp_size: int) -> None:
        for what, count in (("attention heads", self.num_heads), ("KV heads (num_key_value_heads, "
                                                                   "--num-query-groups)", self.num_kv_heads)):
            if count % tp_size:
                working = [t for t in range(1, self.num_kv_heads + 1)
                           if self.num_kv_heads % t == 0 and self.num_heads % t == 0]
                raise ValueError(f"--tensor-model-parallel-size {tp_size} does not divide the {count} {what}: "
                                 f"TP must divide both the {self.num_heads} heads and the {self.num_kv_heads} "
                                 f"KV heads (it may be {', '.join(map(str, working))})")
        if self.ffn_hidden_size % tp_size:
            raise ValueError(f"--tensor-model-parallel-size {tp_size} does not divide the FFN size "
                             f"{self.ffn_hidden_size}")
        if self.vocab_size % tp_size:
            raise ValueError(f"the padded vocabulary ({self.vocab_size}) is not divisible by "
                             f"--tensor-model-parallel-size {tp_size}")

    def block_activations(self, tp_size: int) -> float:
        """A block's saved activations per token and hidden unit, in bytes (half precision),
        without the attention scores (Korthikanti et al. 2022's count for this block): norm and branch inputs
        and dropout masks (10, replicated); q and the output projection's input (2 a*d each), the
        grouped k and v (2 g*d each), SwiGLU's gate and up, silu(gate) and the product (8 f),
        split over TP."""
        split = 4 * self.num_heads * self.head_dim + 4 * self.num_kv_heads * self.head_dim + 8 * self.ffn_hidden_size
        return 10 + split / self.hidden_size / tp_size

    def check_sequence_length(self, seq_length: int) -> None:
        """A sliding window shorter than the rows would change the attention: refused."""
        if self.sliding_window is not None and self.sliding_window < seq_length:
            raise UnsupportedConfig(f"sliding_window {self.sliding_window} is shorter than --seq-length {seq_length}: "
                                    "sliding-window attention is not implemented; use rows of at most "
                                    f"{self.sliding_window} tokens")

    @staticmethod
    def read_hf_config(folder):
        """The transformers config of a HF Llama, Qwen2 or Mistral folder."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(folder)

    @classmethod
    def from_hf(cls, hf_config, vocab_size: int | None = None, **options) -> "LlamaModelConfig":
        """From a transformers `LlamaConfig`, `Qwen2Config` or `MistralConfig`; `vocab_size`
        overrides its (padded) size. Fields changing the maths that are not implemented are refused
        by name."""
        model_type = hf_config.model_type
        if model_type not in HF_MODEL_TYPES:
            raise UnsupportedConfig(f"model_type {model_type!r}: this family covers {list(HF_MODEL_TYPES)}")
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise UnsupportedConfig(f"hidden_act {hf_config.hidden_act!r} is not implemented (only silu: SwiGLU)")
        if model_type == "qwen2":
            qkv_bias, output_bias, mlp_bias = True, False, False
        elif model_type == "llama":
            qkv_bias = output_bias = bool(hf_config.attention_bias)
            mlp_bias = bool(hf_config.mlp_bias)
        else:
            qkv_bias = output_bias = mlp_bias = False
        return cls(
            vocab_size=vocab_size or hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads,
            num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
            head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
            ffn_hidden_size=hf_config.intermediate_size,
            norm_eps=hf_config.rms_norm_eps,
            **_rope_fields(hf_config),
            tie_word_embeddings=bool(hf_config.tie_word_embeddings),
            qkv_bias=qkv_bias, output_bias=output_bias, mlp_bias=mlp_bias,
            sliding_window=_sliding_window(hf_config),
            hf_model_type=model_type,
            init_method_std=hf_config.initializer_range,
            **options,
        )

    def to_hf(self, vocab_size: int, **extra):
        """The transformers config of this model for `vocab_size` (the unpadded vocabulary)."""
        from transformers import AutoConfig

        rope = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "llama3":
            rope.update(factor=self.rope_factor, low_freq_factor=self.rope_low_freq_factor,
                        high_freq_factor=self.rope_high_freq_factor,
                        original_max_position_embeddings=self.rope_original_max_positions)
        fields = dict(vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.ffn_hidden_size,
                      num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                      num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, hidden_act="silu",
                      rms_norm_eps=self.norm_eps, rope_parameters=rope, tie_word_embeddings=self.tie_word_embeddings,
                      initializer_range=self.init_method_std)
        if self.rope_type == "llama3" and "max_position_embeddings" not in extra:  # a model from flags
            fields["max_position_embeddings"] = int(self.rope_original_max_positions * self.rope_factor)
        if self.hf_model_type == "llama":
            if self.qkv_bias != self.output_bias:
                raise UnsupportedConfig("LlamaForCausalLM has one attention_bias for q/k/v and o: this model has "
                                        f"q/k/v bias {self.qkv_bias}, output bias {self.output_bias}")
            fields.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        elif (self.qkv_bias, self.output_bias, self.mlp_bias) != ((True, False, False) if self.hf_model_type == "qwen2"
                                                                   else (False, False, False)):
            raise UnsupportedConfig(f"{self.hf_architecture} has no place for this model's biases")
        if self.hf_model_type == "qwen2":
            fields.update(use_sliding_window=self.sliding_window is not None, sliding_window=self.sliding_window)
        elif self.hf_model_type == "mistral":
            fields.update(sliding_window=self.sliding_window)
        return AutoConfig.for_model(self.hf_model_type, **fields, **extra)


def _rope_fields(hf_config) -> dict:
    """Our rope fields from transformers 5's `rope_parameters` (which also holds what older
    configs call `rope_scaling` and `rope_theta`)."""
    if hasattr(hf_config, "standardize_rope_params"):
        hf_config.standardize_rope_params()
    rope = getattr(hf_config, "rope_parameters", None)
    if rope is None:
        rope = dict(getattr(hf_config, "rope_scaling", None) or {}, rope_theta=getattr(hf_config, "rope_theta", 10000.0))
    if rope and all(isinstance(v, dict) for v in rope.values()):
        raise UnsupportedConfig(f"rope_parameters per layer type ({sorted(rope)}) are not implemented")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedConfig(f"rope_scaling / rope_parameters rope_type {rope_type!r} is not implemented "
                                f"(only {list(ROPE_TYPES)}); refusing rather than dropping the scaling")
    partial = rope.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 1.0))
    if partial not in (None, 1.0):
        raise UnsupportedConfig(f"partial_rotary_factor {partial} is not implemented (only 1.0)")
    fields = {"rope_theta": float(rope.get("rope_theta", 10000.0)), "rope_type": rope_type}
    if rope_type == "llama3":
        missing = [k for k in _LLAMA3_KEYS if rope.get(k) is None]
        if missing:
            raise UnsupportedConfig(f"rope_type llama3 without {missing}")
        fields.update(rope_factor=float(rope["factor"]), rope_low_freq_factor=float(rope["low_freq_factor"]),
                      rope_high_freq_factor=float(rope["high_freq_factor"]),
                      rope_original_max_positions=int(rope["original_max_position_embeddings"]))
    return fields


def _sliding_window(hf_config) -> int | None:
    """The window of the layers that slide (Mistral's every layer; Qwen2's from its
    `layer_types`), or None when none does."""
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


FLOPS_FORMULA = "l*(12*h*d*(a + g) + 18*h*f + 12*s*a*d) + 6*V*h per token"


def model_flops_per_token(config: LlamaModelConfig, seq_length: int) -> float:
    """Forward and backward (3x the forward) of the matmuls: Q and O (h x a*d each), K and V
    (h x g*d each: grouped-query attention's smaller projections), SwiGLU's three h x f
    matrices, attention scores and values over the whole row, and the LM head (V x h, tied or
    not), without recomputation (`FLOPS_FORMULA`; a heads, g KV heads, d head size, f FFN size,
    V the padded vocabulary)."""
    c = config
    h, d, a, g, f = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.ffn_hidden_size
    per_layer = 12.0 * h * d * (a + g) + 18.0 * h * f + 12.0 * seq_length * a * d
    return c.num_layers * per_layer + 6.0 * c.vocab_size * h
