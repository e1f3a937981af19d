"""The method protocol: what a method declares, what the engine hands it, and what it returns.

The engine runs the fixed steps (preprocess, target, explain-model run, ``method.explain``, mapping the
map back onto the image) and knows nothing of a method's internals; a method knows nothing of images,
configs or outputs beyond its :class:`MethodContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ...config import MethodConfig
    from ..runtime.session import EngineSessions, ExplainOutputs


@dataclass(frozen=True)
class MethodContext:
    """What the engine provides for one image.

    Attributes:
        sessions: the EngineSessions (``score_masks`` for image * masks, the sampler, the device).
        explained: ExplainOutputs of the explain-model run for ``target_weights`` (logits; per block the
            gradients' spatial means ``alphas``, the activations' ranges ``spreads``; on the device the
            run's images and activations, of which this image is row ``explained.row``: a run may hold
            several images, see :meth:`Method.explain_many`). Always there: the engine needs the logits
            for every method.
        tensor: the pre-processed image, batch 1, in the model's layout.
        target_weights: float32 [num_classes], the class weights to explain (one-hot for a class);
            add a batch axis (``target_weights[None]``) for the graphs' target input.
        size: (H, W) of the model input; maps are returned at this size.
        chunk_size: masks per batched forward pass (1 for a model with a fixed batch of 1).
        settings: the method's own settings (an instance of its ``settings_type``), or None.
        progress: optional callable(done, total) for long methods.
        target_box: a detector's target: the detection's box, float32 [4] (x1, y1, x2, y2 in model-input
            pixels), its class being ``target_weights`` (one-hot over the classes); None for a classifier.
        image_key: which image the target is of: targets with equal keys (the detections of one image)
            share masked images; None: the image of its own row.
    """

    sessions: EngineSessions
    explained: ExplainOutputs
    tensor: np.ndarray
    target_weights: np.ndarray
    size: tuple[int, int]
    chunk_size: int
    settings: Any = None
    progress: Callable[[int, int], None] | None = None
    target_box: np.ndarray | None = None
    image_key: Any = None

    @property
    def shows(self) -> Any:
        """The identity of the image this target is of (``image_key``, else its row of the run)."""
        return self.image_key if self.image_key is not None else ("row", self.explained.row)


@dataclass
class MethodResult:
    """What :meth:`Method.explain` returns.

    Attributes:
        saliency: float32 [H, W] in [0, 1] at the model input size.
        layer_maps: per-block maps [H, W] in [0, 1] (None for a block without one), shallow to deep, or
            None for a method without per-block maps. A shorter list describes the deepest blocks
            (Grad-CAM: ``[saliency]``, its map being the deepest block's).
        masks_per_layer: forward passes spent, per block shallow to deep; a blockless method gives one
            entry, its total (RISE: ``(masks,)``), or ``()`` for none. A shorter tuple describes the
            deepest blocks, so a blockless method's total is shown on the last block.

    The engine pads both at the shallow end (zero maps, 0 passes) to the model's block count, which is
    what :class:`~inspector.explanation.Explanation` shows.
    """

    saliency: np.ndarray
    layer_maps: list | None = None
    masks_per_layer: tuple[int, ...] = ()


class Method:
    """Base class of the explanation methods. Subclasses set the class attributes and implement
    :meth:`explain`; one instance is registered in :data:`inspector.methods.METHODS` under ``name``.

    Attributes:
        name: the registry name (``method.name`` in the config, ``Inspector.explain(method=...)``).
        needs_gradients: True if the method reads the explain model's gradients or activations
            (``explained.alphas``, ``spreads``, ``activations``); False if it only scores the model.
        settings_type: the dataclass of the method's own settings, or None. They are read from the
            ``method`` section's field named like the method (``method.rise``) where it has one, else
            the dataclass's defaults (see :meth:`settings`).
    """

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = True
    settings_type: ClassVar[type | None] = None

    def settings(self, config: MethodConfig) -> Any:
        """This method's settings from the resolved ``method`` section."""
        if self.settings_type is None:
            return None
        value = getattr(config, self.name, None)
        return value if isinstance(value, self.settings_type) else self.settings_type()

    def explain(self, context: MethodContext) -> MethodResult:
        raise NotImplementedError

    def explain_many(self, contexts: list[MethodContext]) -> list[MethodResult]:
        """Several images, in order (``Inspector.explain_batch``); one at a time unless a method packs
        their work together (SISE's sampler runs). Results must equal :meth:`explain`'s."""
        return [self.explain(c) for c in contexts]

    def __repr__(self) -> str:
        return f"<method {self.name}>"
