"""megatron-core's parallel linear layers add an `_extra_state` entry (None without Transformer
Engine) to every state dict. Our checkpoints hold exactly Megatron-DeepSpeed's tensors, which
tools written for its BLOOM checkpoints concatenate across TP ranks: `without_extra_state(module)`
drops those entries from the state dicts of `module`'s layers and lets them load state dicts
without them (older checkpoints that have them still load)."""

from __future__ import annotations

from torch import nn

EXTRA_STATE = "_extra_state"


def _drop(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    state_dict.pop(prefix + EXTRA_STATE, None)


def _accept_missing(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    state_dict.setdefault(prefix + EXTRA_STATE, None)


def without_extra_state(module: nn.Module) -> nn.Module:
    for layer in module.modules():
        if type(layer).get_extra_state is not nn.Module.get_extra_state:
            layer.register_state_dict_post_hook(_drop)
            layer.register_load_state_dict_pre_hook(_accept_missing)
    return module
