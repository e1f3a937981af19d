"""SISE (Sattarzadeh et al., AAAI 2021): attribution-based input sampling per block.

For each block: select channels (alpha > mu * max alpha, or Ada-SISE's Otsu rule), drop constant maps,
and let the sampler graph score image * mask for every selected map in chunks; the layer map is
sum_k s_k m_k / sum(m_k), min-max normalised. Chunks mix blocks, so every run but the last is full
(on CUDA the last is padded too, see PAD_DEVICES).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_tools import IMAGE, KEEP, LAYER_MAPS, SCORES, TARGET, act_input, idx_input

from ..config import MethodConfig
from ..fusion import fuse, minmax
from ..selection import select_maps
from .base import Method, MethodContext, MethodResult

# Devices where every sampler run gets the same batch size: cuDNN searches convolution algorithms once
# per input shape, so a last chunk of a new size would pay that search again (the CPU provider does not).
PAD_DEVICES = ("cuda",)


@dataclass(frozen=True)
class Chunk:
    indices: list[np.ndarray]  # per block: int64 channel indices (possibly empty)
    keep: np.ndarray  # float32 [K]: 1 for a selected map, 0 for padding, in the sampler's order


def plan_chunks(selected: list[np.ndarray], chunk_size: int, *, pad: bool = False) -> list[Chunk]:
    """Split the (block, channel) pairs, block by block, into chunks of at most ``chunk_size``.
    With ``pad`` a short last chunk is filled up to ``chunk_size`` by repeating its last map with keep 0;
    the padding sits at the end of that map's block, the last block present, so at the end of the chunk."""
    pairs = [(b, int(c)) for b, idx in enumerate(selected) for c in idx]
    chunks = []
    for start in range(0, len(pairs), chunk_size):
        part = pairs[start:start + chunk_size]
        keep = np.ones(len(part), np.float32)
        if pad and len(part) < chunk_size:
            keep = np.concatenate([keep, np.zeros(chunk_size - len(part), np.float32)])
            part = part + [part[-1]] * (chunk_size - len(part))
        indices = [np.array([c for b2, c in part if b2 == b], np.int64) for b in range(len(selected))]
        chunks.append(Chunk(indices, keep))
    return chunks


class Sise(Method):
    """SISE and Ada-SISE. Its settings are the ``method`` section's own keys (preset, mu, adaptive,
    max_masks_per_layer)."""

    name = "sise"
    needs_gradients = True
    settings_type = MethodConfig

    def settings(self, config: MethodConfig) -> MethodConfig:
        return config

    def explain(self, context: MethodContext) -> MethodResult:
        """Select maps per block, score them through the sampler graph chunk by chunk, fuse the layer maps."""
        explained, method = context.explained, context.settings
        sessions, size = context.sessions, context.size
        selected = [select_maps(a, s, mu=method.mu, adaptive=method.adaptive, cap=method.max_masks_per_layer)
                    for a, s in zip(explained.alphas, explained.spreads)]
        chunks = plan_chunks(selected, context.chunk_size, pad=sessions.device in PAD_DEVICES)
        total = np.zeros((len(selected), *size), np.float64)
        device_feeds = {act_input(b): act for b, act in enumerate(explained.activations)}
        device_feeds[IMAGE] = sessions.device_value(context.tensor)
        target_weights = context.target_weights[None]
        for i, chunk in enumerate(chunks):
            feeds = {idx_input(b): idx for b, idx in enumerate(chunk.indices)}
            feeds[TARGET] = target_weights
            feeds[KEEP] = chunk.keep
            layer_maps, _ = sessions.run_sampler(feeds, device_feeds, [LAYER_MAPS, SCORES])
            total += layer_maps
            if context.progress is not None:
                context.progress(i + 1, len(chunks))
        maps = [minmax(total[b]) if len(idx) else None for b, idx in enumerate(selected)]
        return MethodResult(saliency=fuse(maps, size), layer_maps=maps,
                            masks_per_layer=tuple(len(idx) for idx in selected))
