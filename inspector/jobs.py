"""One image file through the whole pipeline: read, explain, review, write. Shared by
`inspector explain`, `inspector demo` and `inspector audit`."""

from __future__ import annotations

import os

from . import preprocess as pre
from .engine import Inspector
from .explanation import Explanation
from .outputs import write_all
from .review import Review, review


def explain_file(insp: Inspector, path: str, out_dir: str, *, target=None, stem: str | None = None
                 ) -> tuple[Explanation, Review]:
    """Explain ``path`` and write its npz, overlay, layer strip and JSON sidecar into ``out_dir``."""
    cfg = insp.config
    array = pre.read_image(path, max_pixels=cfg.preprocess.max_pixels)
    exp = insp.explain(array, target=target)
    result = review(exp, cfg, insp.roi)
    stem = stem or os.path.splitext(os.path.basename(path))[0]
    write_all(out_dir, stem, exp, array, classes=cfg.classes, source=os.path.abspath(path), review=result,
              visuals=cfg.visuals, roi=insp.roi)
    return exp, result
