"""Graph rewrites of the export step, one pass per module (:mod:`.base` for the pass machinery).

The export runs :class:`AddGradients` (for a detector also :class:`AddDetectionHead`) then
:class:`ExposeBlocks`; each checks what it needs and what it
leaves, so running them out of order is an error that names the pass and the condition.
"""

from .add_detection_head import AddDetectionHead
from .add_gradients import AddGradients, add_gradients
from .base import ExportState, Pass, PassManager, PassResult, PassRun, run_passes
from .expose_blocks import ExposeBlocks, expose_blocks

__all__ = ["AddDetectionHead", "AddGradients", "ExportState", "ExposeBlocks", "Pass", "PassManager",
           "PassResult", "PassRun", "add_gradients", "expose_blocks", "run_passes"]
