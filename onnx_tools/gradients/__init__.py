"""Reverse-mode builder: per-op VJP functions (``ops/``) registered by op type (``registry``)."""

from .builder import Gradients, attach, build_gradients, gradient_path
from .emitter import Emitter
from .registry import supported_ops

__all__ = ["Emitter", "Gradients", "attach", "build_gradients", "gradient_path", "supported_ops"]
