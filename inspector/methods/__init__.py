"""Explanation methods, registered by name. A method turns the explain-model outputs of one image into
a saliency map (and per-block maps where it has them); the engine does everything around it."""

from __future__ import annotations

from collections.abc import Callable

from .base import MethodResult
from .gradcam import gradcam
from .rise import rise
from .sise import sise

METHODS: dict[str, Callable[..., MethodResult]] = {"sise": sise, "gradcam": gradcam, "rise": rise}


def get_method(name: str) -> Callable[..., MethodResult]:
    from ..errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"method.name: {name!r} is not one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
