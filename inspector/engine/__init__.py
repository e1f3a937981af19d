"""The engine: SISE and its baselines on two ONNX graphs, from an image to an :class:`Explanation`.

    runtime/   onnxruntime sessions, the exported model and its sampler graph, weights, memory, images in
    method/    the method's numeric steps on maps: Otsu, selection, the score surrogate, fusion, regions
    methods/   the methods (SISE, Grad-CAM, RISE) behind one protocol, and their registry
    inspector.py   Inspector: explain() and explain_batch(); review.py: regions of evidence, ROI share
"""

from .explanation import Explanation
from .inspector import Inspector

__all__ = ["Explanation", "Inspector"]
