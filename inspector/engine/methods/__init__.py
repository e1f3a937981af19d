"""Explanation methods, registered by name in :data:`METHODS`. A method turns the explain-model outputs of
one image into a saliency map (and per-block maps where it has them); the engine does everything around
it: preprocess, target, the explain-model run, then ``method.explain(context)``, then mapping the map
back onto the image (:mod:`inspector.methods.base` has the protocol).

Adding a method (one file + its line in the registry):

1. ``inspector/engine/methods/<name>.py``: a subclass of :class:`Method` with ``name``, ``needs_gradients``
   (does it read ``context.explained``'s gradients/activations?) and ``explain(context) ->
   MethodResult``. Use ``context.target_weights`` (float32 [num_classes]), ``context.tensor``,
   ``context.size``, ``context.chunk_size``, ``context.sessions.score_masks(...)`` for masked forward
   passes, and call ``context.progress(done, total)`` if it is slow. Return the saliency [H, W] in [0, 1];
   ``layer_maps=None`` and ``masks_per_layer=(forward_passes,)`` for a method without blocks.
2. Import it here and add an instance to ``METHODS`` below. It is then ``method.name: <name>`` in a config,
   ``Inspector.explain(image, method="<name>")`` and ``inspector evaluate --methods <name>``.

Settings of its own: a frozen dataclass set as ``settings_type``; the engine hands it over as
``context.settings``, with its defaults, or, for YAML keys, from a field ``<name>: <Dataclass>`` of
``MethodConfig`` in ``inspector/config.py`` (as ``RiseConfig`` under ``method.rise``; the dataclass then
lives in config.py, the schema, and checks its ranges in ``__post_init__``).

A method registered at runtime (``METHODS["mine"] = Mine()``) works the same way.
"""

from __future__ import annotations

from .base import Method, MethodContext, MethodResult
from .drise import DRise
from .gradcam import GradCam
from .rise import Rise
from .sise import Sise

METHODS: dict[str, Method] = {m.name: m for m in (Sise(), GradCam(), Rise(), DRise())}


def get_method(name: str) -> Method:
    """The registered method called ``name``; ConfigError naming the registered ones otherwise."""
    from ...errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"method.name: {name!r} is not one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "MethodContext", "MethodResult", "get_method"]
