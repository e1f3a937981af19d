"""Grad-CAM (Selvaraju et al. 2017) on the deepest block, from the same explain-model run as SISE:
relu(sum_k alpha_k A_k), bilinearly upsampled (half-pixel centres) and min-max normalised. No extra
forward pass."""

from __future__ import annotations

import numpy as np

from onnx_tools import upsample_matrix

from ..method.fusion import minmax
from .base import Method, MethodContext, MethodResult


class GradCam(Method):
    name = "gradcam"
    needs_gradients = True

    def explain(self, context: MethodContext) -> MethodResult:
        explained, size = context.explained, context.size
        acts = explained.activations[-1].numpy()[explained.row]  # [C, h, w]
        cam = np.maximum(np.tensordot(explained.alphas[-1], acts, axes=1), 0.0)  # [h, w]
        h, w = cam.shape
        up = upsample_matrix(h, size[0]) @ cam @ upsample_matrix(w, size[1]).T
        saliency = minmax(up)
        # the deepest block's map, no forward pass of its own
        return MethodResult(saliency=saliency, layer_maps=[saliency], masks_per_layer=(0,))
