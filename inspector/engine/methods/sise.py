"""SISE (Sattarzadeh et al., AAAI 2021): attribution-based input sampling per block.

For each block: select channels (alpha > mu * max alpha, or Ada-SISE's Otsu rule), drop constant maps,
and let the sampler graph score image * mask for every selected map in chunks; the layer map is
sum_k s_k m_k / sum(m_k), min-max normalised. Chunks mix blocks and the images of one explain-model run,
so every run but the last is full (on CUDA the last is padded too, see PAD_DEVICES).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_tools import IMAGE, KEEP, LAYER_MAPS, OWNER, SCORES, TARGET, act_input, idx_input

from ...config import MethodConfig
from ..method import surrogate
from ..method.fusion import fuse, minmax
from ..method.selection import select_maps
from .base import Method, MethodContext, MethodResult

# Devices where every sampler run gets the same batch size: cuDNN searches convolution algorithms once
# per input shape, so a last chunk of a new size would pay that search again (the CPU provider does not).
PAD_DEVICES = ("cuda",)


@dataclass(frozen=True)
class Chunk:
    indices: list[np.ndarray]  # per block: int64 rows n * C_b + c of the run's activations [N * C_b, h, w]
    owner: np.ndarray  # int64 [K]: the image (row n) of each map, in the sampler's order
    keep: np.ndarray  # float32 [K]: 1 for a selected map, 0 for padding, in the sampler's order


def plan_chunks(selected: list[list[np.ndarray]], rows: list[int], channels: list[int], chunk_size: int, *,
                pad: bool = False) -> list[Chunk]:
    """Split the selected maps of several images of one explain-model run into sampler runs.

    ``selected[i][b]``: the selected channels of block b of image i, whose row in the run is ``rows[i]``;
    ``channels[b]``: C_b. Maps are taken image by image, block by block, into chunks of at most
    ``chunk_size``; inside a chunk they are put in the sampler's order (block by block, stable). With
    ``pad`` a short last chunk is filled up to ``chunk_size`` by repeating its last map with keep 0."""
    maps = [(rows[i], b, int(c)) for i, per_block in enumerate(selected)
            for b, idx in enumerate(per_block) for c in idx]
    chunks = []
    for start in range(0, len(maps), chunk_size):
        part = maps[start:start + chunk_size]
        keep = [1.0] * len(part)
        if pad and len(part) < chunk_size:
            keep += [0.0] * (chunk_size - len(part))
            part = part + [part[-1]] * (chunk_size - len(part))
        order = sorted(range(len(part)), key=lambda k: part[k][1])
        indices = [np.array([part[k][0] * channels[b] + part[k][2] for k in order if part[k][1] == b],
                            np.int64) for b in range(len(channels))]
        chunks.append(Chunk(indices, np.array([part[k][0] for k in order], np.int64),
                            np.array([keep[k] for k in order], np.float32)))
    return chunks


class Sise(Method):
    """SISE and Ada-SISE. Its settings are the ``method`` section's own keys (preset, mu, adaptive,
    max_masks_per_layer, score_fraction, fusion, fusion_width)."""

    name = "sise"
    needs_gradients = True
    settings_type = MethodConfig

    def settings(self, config: MethodConfig) -> MethodConfig:
        return config

    def explain(self, context: MethodContext) -> MethodResult:
        return self.explain_many([context])[0]

    def explain_many(self, contexts: list[MethodContext]) -> list[MethodResult]:
        """Select maps per image and block, score them through the sampler graph in chunks that mix the
        images of one explain-model run, fuse each image's layer maps. An image's maps are those of
        explaining it alone; only the sums' order of addition differs. With ``score_fraction`` < 1 only
        the maps :func:`~inspector.surrogate.choose` picks are scored; the others' scores are predicted
        (:func:`~inspector.surrogate.predict`) and their masks added on the host."""
        first = contexts[0]
        method, sessions, size = first.settings, first.sessions, first.size
        selected = [[select_maps(a, s, mu=method.mu, adaptive=method.adaptive, cap=method.max_masks_per_layer)
                     for a, s in zip(c.explained.alphas, c.explained.spreads)] for c in contexts]
        channels = [len(a) for a in first.explained.alphas]
        runs: dict[int, list[int]] = {}  # contexts by the explain-model run they come from
        for i, c in enumerate(contexts):
            runs.setdefault(id(c.explained.images), []).append(i)
        sampling = method.score_fraction < 1.0
        host_acts = []  # per image, per block: its activations on the host (for the predicted maps' masks)
        features = []  # per image, per block: surrogate.map_features of the selected maps
        scored = selected
        if sampling:
            per_run = {key: [a.numpy() for a in contexts[members[0]].explained.activations]
                       for key, members in runs.items()}
            host_acts = [[a[c.explained.row] for a in per_run[id(c.explained.images)]] for c in contexts]
            features = [[surrogate.map_features(acts[b][idx]) for b, idx in enumerate(per_block)]
                        for acts, per_block in zip(host_acts, selected)]
            scored = [[self._scored(f, idx, method.score_fraction) for f, idx in zip(per_feats, per_block)]
                      for per_feats, per_block in zip(features, selected)]
        pad = sessions.device in PAD_DEVICES
        plans = [(members, plan_chunks([scored[i] for i in members],
                                       [contexts[i].explained.row for i in members], channels,
                                       first.chunk_size, pad=pad))
                 for members in runs.values()]
        total_chunks, done = sum(len(chunks) for _, chunks in plans), 0
        totals = np.zeros((len(contexts), len(channels), *size), np.float64)
        measured = [[{} for _ in channels] for _ in contexts]  # per image and block: channel -> score
        for members, chunks in plans:
            explained = contexts[members[0]].explained
            device_feeds = {act_input(b): act for b, act in enumerate(explained.activations)}
            device_feeds[IMAGE] = explained.images
            targets = np.zeros((explained.images.shape()[0], len(first.target_weights)), np.float32)
            for i in members:
                targets[contexts[i].explained.row] = contexts[i].target_weights
            by_row = {contexts[i].explained.row: i for i in members}
            for chunk in chunks:
                feeds = {idx_input(b): idx for b, idx in enumerate(chunk.indices)}
                feeds.update({TARGET: targets, KEEP: chunk.keep, OWNER: chunk.owner})
                layer_maps, scores = sessions.run_sampler(feeds, device_feeds, [LAYER_MAPS, SCORES])
                for i in members:
                    totals[i] += layer_maps[contexts[i].explained.row]
                if sampling:
                    self._note_scores(chunk, channels, scores, by_row, measured)
                done += 1
                if first.progress is not None:
                    first.progress(done, total_chunks)
            if sampling:
                for i in members:
                    for b, (idx, chosen) in enumerate(zip(selected[i], scored[i])):
                        self._add_predicted(totals[i, b], host_acts[i][b], features[i][b], idx, chosen,
                                            measured[i][b], size)
        results = []
        for per_block, per_block_scored, total in zip(selected, scored, totals):
            maps = [minmax(total[b]) if len(idx) else None for b, idx in enumerate(per_block)]
            fused = fuse(maps, size, method.fusion, method.fusion_width)
            results.append(MethodResult(saliency=fused, layer_maps=maps,
                                        masks_per_layer=tuple(len(idx) for idx in per_block_scored)))
        return results

    @staticmethod
    def _scored(features: np.ndarray, idx: np.ndarray, fraction: float) -> np.ndarray:
        """The channels of ``idx`` (decreasing gradient order; ``features`` theirs) that get a forward
        pass, in that order."""
        if not len(idx):
            return idx
        return idx[surrogate.choose(features, surrogate.scored_count(len(idx), fraction))]

    @staticmethod
    def _note_scores(chunk: Chunk, channels: list[int], scores: np.ndarray, by_row: dict,
                     measured: list) -> None:
        """Record each measured score under its image and channel (the sampler's order: block by block,
        then the order of idx/<b>; padding has keep 0)."""
        k = 0
        for b, rows in enumerate(chunk.indices):
            for row in rows:
                if chunk.keep[k] > 0:
                    measured[by_row[int(row) // channels[b]]][b][int(row) % channels[b]] = float(scores[k])
                k += 1

    @staticmethod
    def _add_predicted(total: np.ndarray, block_acts: np.ndarray, features: np.ndarray, idx: np.ndarray,
                       chosen: np.ndarray, measured: dict, size: tuple[int, int]) -> None:
        """Add the predicted maps' share to a layer map's sum (the measured share came from the sampler)."""
        rest = np.setdiff1d(idx, chosen)
        if not len(rest):
            return
        position = {int(c): k for k, c in enumerate(idx)}
        known = np.array([position[int(c)] for c in chosen], np.int64)
        predicted = surrogate.predict(features, known, np.array([measured[int(c)] for c in chosen]))
        unknown = np.array([position[int(c)] for c in rest], np.int64)
        total += surrogate.weighted_masks(block_acts[rest], predicted[unknown], size)
