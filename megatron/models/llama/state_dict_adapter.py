"""How the Llama family's tensors are named, numbered, split and shaped, in one table of rules
(the same interface as BLOOM's adapter):

- pipeline layers numbered as Megatron-DeepSpeed's GPTModelPipe (`common/layer_numbering.py`):
  1 the word embeddings, 3 .. L+2 the blocks, L+4 the final RMSNorm, L+5 the LM head, a layer of
  its own (`lm_head.weight`) when it is not tied to the embeddings;
- inside a block, Megatron-DeepSpeed's names: `input_layernorm.weight`,
  `self_attention.query_key_value.*` (q, k and v fused per KV group: each group's query heads,
  then its key head, then its value head, so an even split of the rows gives each TP rank whole
  groups), `self_attention.dense.*` (o_proj), `post_attention_layernorm.weight`,
  `mlp.dense_h_to_4h.*` (gate and up fused, `[gate; up]` whole, `[gate_r; up_r]` on TP rank r),
  `mlp.dense_4h_to_h.*` (down_proj);
- transformers' names (`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`,
  `model.layers.{i}.mlp.{gate,up,down}_proj`, `model.norm`, `lm_head`), converted a layer at a
  time (`from_hf_layer`, `to_hf_layer`);
- tensor-parallel rules: column-parallel weights and biases (QKV, gate/up, the vocabulary) split
  along dim 0, row-parallel weights (o_proj, down_proj) along dim 1; norms and row-parallel biases
  replicated.
"""

from __future__ import annotations

import math

import torch

from megatron.models.common import layer_numbering, tensor_split
from megatron.models.common.layer_numbering import (EMBEDDING_LAYER, FIRST_BLOCK_LAYER, block_layer,  # noqa: F401
                                                    final_norm_layer, layer_to_plain_name, lm_head_layer,
                                                    plain_name_to_layer)
from megatron.models.spec import UnsupportedConfig

SPLIT_DIMS = {
    "word_embeddings.weight": 0,
    "lm_head.weight": 0,
    "self_attention.query_key_value.weight": 0,
    "self_attention.query_key_value.bias": 0,
    "mlp.dense_h_to_4h.weight": 0,
    "mlp.dense_h_to_4h.bias": 0,
    "self_attention.dense.weight": 1,
    "mlp.dense_4h_to_h.weight": 1,
}
FUSED_GATE_UP = ("mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias")
VOCAB_TENSORS = ("word_embeddings.weight", "lm_head.weight")

TIED_HEAD = "lm_head.weight"
_HF_LAYER_PREFIX = "model.layers."
_HF_BLOCK_NAMES = {  # ours: HF's, for the tensors that map one to one
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "self_attention.dense.bias": "self_attn.o_proj.bias",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
    "mlp.dense_4h_to_h.bias": "mlp.down_proj.bias",
}


def parameter_layers(num_layers: int, tied: bool) -> list[int]:
    """The pipeline layers that hold parameters, in order; an untied LM head is the last."""
    return layer_numbering.parameter_layers(num_layers, tied)


def layer_kind(layer: int, num_layers: int, tied: bool) -> str:
    """'embedding', 'block', 'final_norm' or (untied) 'lm_head': what a parameter layer holds."""
    return layer_numbering.layer_kind(layer, num_layers, tied, family="Llama-family model")


def layer_shapes(config, kind: str, vocab_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of a layer of `kind`, whole (not split over TP), by its name in the layer;
    vocabulary tensors have `vocab_size` rows (default: the config's padded vocabulary)."""
    c = config
    h, d = c.hidden_size, c.head_dim
    if kind == "embedding":
        return {"word_embeddings.weight": (vocab_size or c.vocab_size, h)}
    if kind == "lm_head":
        return {"lm_head.weight": (vocab_size or c.vocab_size, h)}
    if kind == "final_norm":
        return {"weight": (h,)}
    if kind != "block":
        raise KeyError(f"{kind!r} is not a Llama-family layer with parameters")
    qkv = (c.num_heads + 2 * c.num_kv_heads) * d
    shapes = {
        "input_layernorm.weight": (h,),
        "self_attention.query_key_value.weight": (qkv, h),
        "self_attention.query_key_value.bias": (qkv,),
        "self_attention.dense.weight": (h, c.num_heads * d),
        "self_attention.dense.bias": (h,),
        "post_attention_layernorm.weight": (h,),
        "mlp.dense_h_to_4h.weight": (2 * c.ffn_hidden_size, h),
        "mlp.dense_h_to_4h.bias": (2 * c.ffn_hidden_size,),
        "mlp.dense_4h_to_h.weight": (h, c.ffn_hidden_size),
        "mlp.dense_4h_to_h.bias": (h,),
    }
    absent = {"self_attention.query_key_value.bias": not c.qkv_bias, "self_attention.dense.bias": not c.output_bias,
              "mlp.dense_h_to_4h.bias": not c.mlp_bias, "mlp.dense_4h_to_h.bias": not c.mlp_bias}
    return {name: shape for name, shape in shapes.items() if not absent.get(name)}


def layer_parameters(config, kind: str, tp_size: int) -> int:
    """Parameters of a layer of `kind` on one tensor-parallel rank (replicated tensors whole)."""
    return sum(math.prod(shape) // (tp_size if tp_split_dim(name) is not None else 1)
               for name, shape in layer_shapes(config, kind).items())


def tp_split_dim(name: str) -> int | None:
    return SPLIT_DIMS.get(name)


def _parts(name: str) -> int:
    return 2 if name in FUSED_GATE_UP else 1


def split_for_tp(name: str, tensor: torch.Tensor, tp_size: int) -> list[torch.Tensor]:
    return tensor_split.split(name, tensor, tp_size, tp_split_dim(name), _parts(name))


def merge_from_tp(name: str, shards: list[torch.Tensor], where: str) -> torch.Tensor:
    return tensor_split.merge(name, shards, tp_split_dim(name), where, _parts(name))


def hf_to_layer(name: str, num_layers: int) -> tuple[int, str]:
    """A HF parameter name -> (pipeline layer, its HF name inside the layer): the tensors that
    `from_hf_layer` turns into that layer's."""
    if name == "model.embed_tokens.weight":
        return EMBEDDING_LAYER, "embed_tokens.weight"
    if name == "model.norm.weight":
        return final_norm_layer(num_layers), "norm.weight"
    if name == "lm_head.weight":
        return lm_head_layer(num_layers), name
    if name.startswith(_HF_LAYER_PREFIX):
        block, local = name.removeprefix(_HF_LAYER_PREFIX).split(".", 1)
        if block.isdigit() and int(block) < num_layers:
            return block_layer(int(block)), local
    raise KeyError(f"{name}: not a parameter of a {num_layers}-layer Llama-family model")


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config) -> torch.Tensor:
    """Per KV group: its query heads, its key head, its value head (weights or biases)."""
    g, d = config.num_kv_heads, config.head_dim
    r = config.num_heads // g
    rest = q.shape[1:]
    return torch.cat([q.reshape(g, r * d, *rest), k.reshape(g, d, *rest), v.reshape(g, d, *rest)],
                     dim=1).reshape(-1, *rest)


def _unfuse_qkv(qkv: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, d = config.num_kv_heads, config.head_dim
    r = config.num_heads // g
    rest = qkv.shape[1:]
    q, k, v = qkv.reshape(g, (r + 2) * d, *rest).split([r * d, d, d], dim=1)
    return (q.reshape(-1, *rest).contiguous(), k.reshape(-1, *rest).contiguous(), v.reshape(-1, *rest).contiguous())


def from_hf_layer(layer: int, hf: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A layer's tensors by our names, from its HF tensors (as `hf_to_layer` names them); a
    missing tensor raises KeyError naming it."""
    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise KeyError(f"{name} is missing")
        return hf.pop(name)

    kind = layer_kind(layer, config.num_layers, config.tie_word_embeddings)
    if kind == "embedding":
        ours = {"word_embeddings.weight": take("embed_tokens.weight")}
    elif kind == "final_norm":
        ours = {"weight": take("norm.weight")}
    elif kind == "lm_head":
        ours = {"lm_head.weight": take("lm_head.weight")}
    else:
        shapes = layer_shapes(config, "block")
        ours = {local: take(theirs) for local, theirs in _HF_BLOCK_NAMES.items() if local in shapes}
        for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
            ours[f"self_attention.query_key_value.{suffix}"] = _fuse_qkv(
                *(take(f"self_attn.{p}_proj.{suffix}") for p in "qkv"), config)
        for suffix in ("weight", "bias") if config.mlp_bias else ("weight",):
            ours[f"mlp.dense_h_to_4h.{suffix}"] = torch.cat([take(f"mlp.gate_proj.{suffix}"),
                                                             take(f"mlp.up_proj.{suffix}")])
    if hf:
        raise KeyError(f"{sorted(hf)} are not tensors of this model (its biases: q/k/v {config.qkv_bias}, "
                       f"o {config.output_bias}, MLP {config.mlp_bias})")
    return ours


def to_hf_layer(layer: int, tensors: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A layer's tensors by their full HF names (the inverse of `from_hf_layer`)."""
    kind = layer_kind(layer, config.num_layers, config.tie_word_embeddings)
    if kind == "embedding":
        return {"model.embed_tokens.weight": tensors["word_embeddings.weight"]}
    if kind == "final_norm":
        return {"model.norm.weight": tensors["weight"]}
    if kind == "lm_head":
        return {"lm_head.weight": tensors["lm_head.weight"]}
    prefix = f"{_HF_LAYER_PREFIX}{layer - FIRST_BLOCK_LAYER}."
    out = {prefix + theirs: tensors[ours] for ours, theirs in _HF_BLOCK_NAMES.items() if ours in tensors}
    for suffix in ("weight", "bias"):
        if f"self_attention.query_key_value.{suffix}" in tensors:
            q, k, v = _unfuse_qkv(tensors[f"self_attention.query_key_value.{suffix}"], config)
            out.update({f"{prefix}self_attn.{p}_proj.{suffix}": t for p, t in zip("qkv", (q, k, v))})
        if f"mlp.dense_h_to_4h.{suffix}" in tensors:
            gate, up = tensors[f"mlp.dense_h_to_4h.{suffix}"].chunk(2)
            out.update({f"{prefix}mlp.gate_proj.{suffix}": gate.contiguous(),
                        f"{prefix}mlp.up_proj.{suffix}": up.contiguous()})
    return out


# LoRA (`models/common/lora.py`) as HF PEFT names it: the HF modules PEFT adapts for each of our
# targets; our fused `query_key_value` and `dense_h_to_4h` are q/k/v and gate/up, each with the
# same A and its rows of B (the rows `to_hf_layer` gives the weight)
LORA_HF_MODULES = {"query_key_value": ("q_proj", "k_proj", "v_proj"), "dense": ("o_proj",),
                   "dense_h_to_4h": ("gate_proj", "up_proj"), "dense_4h_to_h": ("down_proj",)}
_LORA_MODULES = {  # our module in a block: its HF parent module, the HF modules it is
    "self_attention.query_key_value": "self_attn",
    "self_attention.dense": "self_attn",
    "mlp.dense_h_to_4h": "mlp",
    "mlp.dense_4h_to_h": "mlp",
}


def _lora_parts(ours: str) -> list[str]:
    return [f"{_LORA_MODULES[ours]}.{name}" for name in LORA_HF_MODULES[ours.rsplit(".", 1)[-1]]]


def _unfuse_lora_b(ours: str, b: torch.Tensor, config) -> tuple[torch.Tensor, ...]:
    if ours.endswith("query_key_value"):
        return _unfuse_qkv(b, config)
    if ours.endswith("dense_h_to_4h"):
        return tuple(part.contiguous() for part in b.chunk(2))
    return (b,)


def _fuse_lora_b(ours: str, parts: list[torch.Tensor], config) -> torch.Tensor:
    if ours.endswith("query_key_value"):
        return _fuse_qkv(*parts, config)
    return torch.cat(parts)


def lora_fused_rows(module: str, config) -> tuple[tuple[str, ...], torch.Tensor] | None:
    """A fused layer's HF part modules and the part index of each of its whole output rows (for
    LoRA with a separate A per part, `LoraConfig.parts`); None for a layer that is not fused."""
    if module not in ("self_attention.query_key_value", "mlp.dense_h_to_4h"):
        return None
    c = config
    sizes = ((c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim)
             if module.endswith("query_key_value") else (c.ffn_hidden_size, c.ffn_hidden_size))
    rows = _fuse_lora_b(module, [torch.full((n,), i) for i, n in enumerate(sizes)], config)
    return tuple(name.rsplit(".", 1)[-1] for name in _lora_parts(module)), rows


def _part_slices(lora, module: str) -> list[tuple[str, slice | None]]:
    """Each HF part of our `module` and its rows of a stacked A (None: the one shared A)."""
    parts = _lora_parts(module)
    if lora.parts is None or len(parts) == 1:
        return [(part, None) for part in parts]
    r = lora.rank
    return [(part, slice(i * r, (i + 1) * r)) for i, part in enumerate(parts)]


def lora_to_hf_layer(layer: int, tensors: dict[str, torch.Tensor], config, lora) -> dict[str, torch.Tensor]:
    """A layer's LoRA tensors by their full HF names (`model.layers.{i}.self_attn.q_proj.lora_A.weight`):
    a fused module's B split by its parts' rows, with the one A copied to each part, or (with
    `lora.parts`) each adapted part's own rank slice of the stacked A and of its B rows."""
    prefix = f"{_HF_LAYER_PREFIX}{layer - FIRST_BLOCK_LAYER}."
    out = {}
    for ours in _LORA_MODULES:
        if f"{ours}.lora_A.weight" not in tensors:
            continue
        a = tensors[f"{ours}.lora_A.weight"]
        b_parts = _unfuse_lora_b(ours, tensors[f"{ours}.lora_B.weight"], config)
        for (part, ranks), b in zip(_part_slices(lora, ours), b_parts):
            if ranks is not None and part.rsplit(".", 1)[-1] not in lora.parts:
                continue
            out[f"{prefix}{part}.lora_A.weight"] = (a if ranks is None else a[ranks]).clone()
            out[f"{prefix}{part}.lora_B.weight"] = (b if ranks is None else b[:, ranks]).contiguous()
    return out


def lora_from_hf_layer(layer: int, hf: dict[str, torch.Tensor], config, lora) -> dict[str, torch.Tensor]:
    """A layer's LoRA tensors by our names from PEFT's (as `hf_to_layer` names them): one A for a
    fused module's parts, which must all be adapted with equal A's (refused otherwise:
    UnsupportedConfig), or with `lora.parts` each adapted part's A stacked (zeros for the parts
    without) and its B in its own rank slice; a missing or unknown tensor raises KeyError
    naming it."""
    hf, ours, block = dict(hf), {}, layer - FIRST_BLOCK_LAYER
    for module in _LORA_MODULES:
        slices = _part_slices(lora, module)
        parts = [part for part, _ in slices]
        present = [part for part in parts if f"{part}.lora_A.weight" in hf]
        if not present:
            continue
        try:
            a = {part: hf.pop(f"{part}.lora_A.weight") for part in present}
            b = {part: hf.pop(f"{part}.lora_B.weight") for part in present}
        except KeyError as error:
            raise KeyError(f"{error.args[0]} is missing") from None
        if slices[0][1] is None:  # one A
            if present != parts:
                raise UnsupportedConfig(f"block {block}: LoRA on {', '.join(present)} but not on all of "
                                        f"{', '.join(parts)}: our fused {module} takes one adapter for all of them")
            if any(not torch.equal(a[part], a[parts[0]]) for part in parts[1:]):
                raise UnsupportedConfig(f"block {block}: the lora_A of {', '.join(parts)} differ: our fused {module} "
                                        "shares one A among them")
            ours[f"{module}.lora_A.weight"] = a[parts[0]]
            ours[f"{module}.lora_B.weight"] = _fuse_lora_b(module, [b[part] for part in parts], config)
            continue
        first = a[present[0]]
        width = lora.rank * len(parts)
        stacked_a = first.new_zeros(width, first.shape[1])
        b_rows = []
        rows = lora_fused_rows(module, config)[1]
        for index, (part, ranks) in enumerate(slices):
            part_b = first.new_zeros(int((rows == index).sum()), width)
            if part in a:
                stacked_a[ranks] = a[part]
                part_b[:, ranks] = b[part]
            b_rows.append(part_b)
        ours[f"{module}.lora_A.weight"] = stacked_a
        ours[f"{module}.lora_B.weight"] = _fuse_lora_b(module, b_rows, config)
    if hf:
        raise KeyError(f"{sorted(hf)} are not LoRA tensors of this model's targets")
    return ours
