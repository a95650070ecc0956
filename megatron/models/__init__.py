"""Model families behind one small spec each (`spec.ModelSpec`), and the registry that names them:
a family is a folder `megatron/models/<name>/` whose package exports `SPEC`. The registry is the
one place that knows which families exist: by name (a checkpoint's metadata), by the HF
`model_type` of a `config.json` (the converters), and by the architecture Megatron's flags
describe (a run from random initialisation)."""

from __future__ import annotations

import importlib

from megatron.models.spec import ModelSpec

FAMILIES = ("bloom", "llama")


def get_model_spec(name: str = "bloom") -> ModelSpec:
    """The spec of a registered family (its package imported on first use)."""
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r}: the registered families are {list(FAMILIES)}")
    return importlib.import_module(f"megatron.models.{name}").SPEC


def spec_for_hf_model_type(model_type: str) -> ModelSpec:
    """The family whose converters read HF models of `model_type` (`config.json`)."""
    for name in FAMILIES:
        spec = get_model_spec(name)
        if model_type in spec.hf_model_types:
            return spec
    known = [t for name in FAMILIES for t in get_model_spec(name).hf_model_types]
    raise ValueError(f"model_type {model_type!r} is not a family of this project (it converts {known})")


def spec_for_architecture(position_embedding: str, normalization: str, swiglu: bool) -> ModelSpec:
    """The family with this position embedding, norm and MLP (Megatron's
    `--position-embedding-type`, `--normalization`, `--swiglu`)."""
    for name in FAMILIES:
        spec = get_model_spec(name)
        if spec.architecture == (position_embedding, normalization, swiglu):
            return spec
    offered = ", ".join(f"{get_model_spec(n).name}: --position-embedding-type {p} --normalization {m}"
                        f"{' --swiglu' if s else ''}" for n in FAMILIES for p, m, s in [get_model_spec(n).architecture])
    raise ValueError(f"--position-embedding-type {position_embedding} --normalization {normalization}"
                     f"{' --swiglu' if swiglu else ''} is no family of this project ({offered})")
