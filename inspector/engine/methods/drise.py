"""D-RISE (Petsiuk et al., CVPR 2021): RISE's random masks on a detector, each masked image scored by its
similarity to the target detection (the maximum over the masked image's detections of IoU x class-score
similarity x objectness, computed in the sampler graph). Only for detectors; the paper's defaults
(5,000 masks, a 16 x 16 grid) are :class:`~inspector.config.DRiseConfig`."""

from __future__ import annotations

from ...config import DRiseConfig
from ...errors import ConfigError
from .base import MethodContext, MethodResult
from .rise import Rise


class DRise(Rise):
    """Settings: :class:`~inspector.config.DRiseConfig` (``method.drise``)."""

    name = "drise"
    settings_type = DRiseConfig

    def explain(self, context: MethodContext) -> MethodResult:
        if context.target_box is None:
            raise ConfigError("method.name: drise explains a detector's detections; this model is a "
                              "classifier: use rise")
        return super().explain(context)
