"""Model families behind one small spec each (`spec.ModelSpec`), and the registry that names them:
a family is a folder `megatron/models/<name>/` whose package exports `SPEC`."""

from __future__ import annotations

import importlib

from megatron.models.spec import ModelSpec

FAMILIES = ("bloom",)


def get_model_spec(name: str = "bloom") -> ModelSpec:
    """The spec of a registered family (its package imported on first use)."""
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r}: the registered families are {list(FAMILIES)}")
    return importlib.import_module(f"megatron.models.{name}").SPEC
