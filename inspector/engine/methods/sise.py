"""SISE (Sattarzadeh et al., AAAI 2021): attribution-based input sampling per block.

For each block: select channels (alpha > mu * max alpha, or Ada-SISE's Otsu rule), drop constant maps,
and let the sampler graph score image * mask for every selected map in chunks; the layer map is
sum_k s_k m_k / sum(m_k), min-max normalised. Chunks mix blocks and the images of one explain-model run,
so every run but the last is full (on CUDA the last is padded too, see PAD_DEVICES).

Each context is one target (a class of an image, or one detection). Targets that show the same image
(the detections of one image: equal ``image_key``) share their masked images: a map selected by several
of them is scored once, for all of them, so the cost grows with the union of their selections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_tools import IMAGE, KEEP, LAYER_MAPS, OWNER, SCORES, TARGET, TARGET_BOXES, act_input, idx_input

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
    owner: np.ndarray  # int64 [K]: the image (row n) each map masks, in the sampler's order
    keep: np.ndarray  # float32 [K, T]: 1 where target t uses map k, 0 elsewhere and for padding


def plan_chunks(selected: list[list[np.ndarray]], rows: list[int], channels: list[int], chunk_size: int, *,
                pad: bool = False, images: list | None = None) -> list[Chunk]:
    """Split the selected maps of the targets of one explain-model run into sampler runs.

    ``selected[t][b]``: the selected channels of block b of target t, whose row in the run is ``rows[t]``;
    ``images[t]``: which image target t shows (default: its row): targets showing the same image share a
    map they both selected, scored once. ``channels[b]``: C_b. Maps are taken target by target, block by
    block (a shared map where it first appears) into chunks of at most ``chunk_size``; inside a chunk
    they are put in the sampler's order (block by block, stable). With ``pad`` a short last chunk is
    filled up to ``chunk_size`` by repeating its last map with keep 0."""
    images = list(rows) if images is None else list(images)
    row_of: dict = {}
    users: dict[tuple, list[int]] = {}  # (image, block, channel) -> the targets using the map
    for t, per_block in enumerate(selected):
        row_of.setdefault(images[t], rows[t])
        for b, idx in enumerate(per_block):
            for c in idx:
                users.setdefault((images[t], b, int(c)), []).append(t)
    maps = list(users)
    chunks = []
    for start in range(0, len(maps), chunk_size):
        part = maps[start:start + chunk_size]
        keep = np.zeros((max(len(part), chunk_size if pad else 0), len(selected)), np.float32)
        for k, key in enumerate(part):
            keep[k, users[key]] = 1.0
        if pad and len(part) < chunk_size:
            part = part + [part[-1]] * (chunk_size - len(part))
        order = sorted(range(len(part)), key=lambda k: part[k][1])
        indices = [np.array([row_of[part[k][0]] * channels[b] + part[k][2] for k in order if part[k][1] == b],
                            np.int64) for b in range(len(channels))]
        chunks.append(Chunk(indices, np.array([row_of[part[k][0]] for k in order], np.int64), keep[order]))
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
                                       first.chunk_size, pad=pad,
                                       images=[contexts[i].shows for i in members]))
                 for members in runs.values()]
        total_chunks, done = sum(len(chunks) for _, chunks in plans), 0
        totals = np.zeros((len(contexts), len(channels), *size), np.float64)
        measured = [[{} for _ in channels] for _ in contexts]  # per target and block: channel -> score
        for members, chunks in plans:
            explained = contexts[members[0]].explained
            device_feeds = {act_input(b): act for b, act in enumerate(explained.activations)}
            device_feeds[IMAGE] = explained.images
            targets = {TARGET: np.stack([contexts[i].target_weights for i in members]).astype(np.float32)}
            if contexts[members[0]].target_box is not None:
                targets[TARGET_BOXES] = np.stack([contexts[i].target_box for i in members]).astype(np.float32)
            for chunk in chunks:
                feeds = {idx_input(b): idx for b, idx in enumerate(chunk.indices)}
                feeds.update({**targets, KEEP: chunk.keep, OWNER: chunk.owner})
                layer_maps, scores = sessions.run_sampler(feeds, device_feeds, [LAYER_MAPS, SCORES])
                for t, i in enumerate(members):
                    totals[i] += layer_maps[t]
                if sampling:
                    self._note_scores(chunk, channels, scores, members, measured)
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
    def _note_scores(chunk: Chunk, channels: list[int], scores: np.ndarray, members: list[int],
                     measured: list) -> None:
        """Record each measured score [K, T] under the targets that use its map, by block and channel (the
        sampler's order: block by block, then the order of idx/<b>; padding has keep 0)."""
        k = 0
        for b, rows in enumerate(chunk.indices):
            for row in rows:
                for t in np.flatnonzero(chunk.keep[k]):
                    measured[members[t]][b][int(row) % channels[b]] = float(scores[k, t])
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
