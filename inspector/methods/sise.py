"""SISE (Sattarzadeh et al., AAAI 2021): attribution-based input sampling per block.

For each block: select channels (alpha > mu * max alpha, or Ada-SISE's Otsu rule), drop constant maps,
and let the sampler graph score image * mask for every selected map in chunks; the layer map is
sum_k s_k m_k / sum(m_k), min-max normalised. Chunks mix blocks, so every run is full.
"""

from __future__ import annotations

import numpy as np

from onnx_tools.sampler import IMAGE, LAYER_MAPS, SCORES, TARGET, act_input, idx_input

from ..fusion import fuse, minmax
from ..selection import select_maps
from .base import MethodResult


def plan_chunks(selected: list[np.ndarray], chunk_size: int) -> list[list[np.ndarray]]:
    """Split the (block, channel) pairs, block by block, into chunks of at most ``chunk_size``;
    each chunk is a per-block list of channel indices (possibly empty)."""
    pairs = [(b, int(c)) for b, idx in enumerate(selected) for c in idx]
    chunks = []
    for start in range(0, len(pairs), chunk_size):
        part = pairs[start:start + chunk_size]
        chunks.append([np.array([c for b2, c in part if b2 == b], np.int64) for b in range(len(selected))])
    return chunks


def sise(sessions, explained, image: np.ndarray, target: np.ndarray, *, method, size,
         progress=None) -> MethodResult:
    """Run SISE's sampling for one image.

    Args:
        sessions: the EngineSessions.
        explained: ExplainOutputs of the explain-model run (alphas, spreads, device activations).
        image: the pre-processed tensor (batch 1).
        target: float32 [1, num_classes] class weights.
        method: resolved MethodConfig.
        size: (H, W) of the model input.
    """
    selected = [select_maps(a, s, mu=method.mu, adaptive=method.adaptive, cap=method.max_masks_per_layer)
                for a, s in zip(explained.alphas, explained.spreads)]
    chunks = plan_chunks(selected, method.chunk_size)
    total = np.zeros((len(selected), *size), np.float64)
    device_feeds = {act_input(b): act for b, act in enumerate(explained.activations)}
    device_feeds[IMAGE] = sessions.device_value(image)
    for i, chunk in enumerate(chunks):
        feeds = {idx_input(b): idx for b, idx in enumerate(chunk)}
        feeds[TARGET] = target
        layer_maps, _ = sessions.run_sampler(feeds, device_feeds, [LAYER_MAPS, SCORES])
        total += layer_maps
        if progress is not None:
            progress(i + 1, len(chunks))
    maps = [minmax(total[b]) if len(idx) else None for b, idx in enumerate(selected)]
    return MethodResult(saliency=fuse(maps, size), layer_maps=maps,
                        masks_per_layer=tuple(len(idx) for idx in selected))
