"""Explanation methods, registered by name. A method turns the explain-model outputs of one image into
per-block maps; the engine does everything around it (pre-processing, target, fusion, outputs)."""

from __future__ import annotations

from collections.abc import Callable

from .sise import sise_layer_maps

METHODS: dict[str, Callable] = {"sise": sise_layer_maps}


def get_method(name: str) -> Callable:
    from ..errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"method.name: {name!r} is not one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
