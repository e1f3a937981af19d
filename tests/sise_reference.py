"""A straightforward PyTorch implementation of SISE as the paper (Sattarzadeh et al., AAAI 2021) and
docs/method.md describe it,
written independently of the engine (no code shared), used as the ground truth of the parity tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def otsu_reference(v: torch.Tensor) -> float:
    """Otsu by exhaustive search over the 255 splits of a 256-bin histogram on [0, 1] (on the CPU)."""
    v = v.detach().double().cpu()
    hist = torch.histc(v.flatten(), bins=256, min=0.0, max=1.0)
    centers = (torch.arange(256, dtype=torch.float64) + 0.5) / 256
    best, threshold = -1.0, float(v.max())
    for i in range(255):
        w0, w1 = hist[: i + 1].sum(), hist[i + 1:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0 = (hist[: i + 1] * centers[: i + 1]).sum() / w0
        m1 = (hist[i + 1:] * centers[i + 1:]).sum() / w1
        between = float(w0 * w1 * (m0 - m1) ** 2)
        if between > best:
            best, threshold = between, float(centers[i])
    return threshold


def normalise(v: torch.Tensor) -> torch.Tensor:
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)


@torch.no_grad()
def _scores(model, x, masks, score, batch, autocast, channels_last=False):
    """``autocast``: False, True (float16) or a dtype (torch.bfloat16 on a CPU)."""
    out = []
    dtype = autocast if isinstance(autocast, torch.dtype) else torch.float16
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.autocast(x.device.type, dtype=dtype, enabled=bool(autocast)):
        for i in range(0, len(masks), batch):
            y = model((x * masks[i:i + batch, None]).contiguous(memory_format=layout))
            y = tuple(t.float() for t in y) if isinstance(y, tuple) else y.float()  # a split head's outputs
            out.append(score(y))
    return torch.cat(out)


def _kmeans_representatives(f: torch.Tensor, n: int, rounds: int = 20) -> list[int]:
    """The maps to score among ``f`` (maps in decreasing alpha order, as rows): k-means from n maps spread
    evenly over that order, each cluster's member nearest its centre, made up to n from the spread."""
    total = len(f)
    if n >= total:
        return list(range(total))
    spread = [int((j + 0.5) * total / n) for j in range(n)]
    centres = f[spread].clone()
    for _ in range(rounds):
        labels = torch.cdist(f, centres).argmin(1)
        new = torch.stack([f[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(n)])
        if torch.equal(new, centres):
            break
        centres = new
    d = torch.cdist(f, centres) ** 2
    labels = d.argmin(1)
    chosen = []
    for j in range(n):
        members = torch.nonzero(labels == j).flatten()
        if len(members):  # ties (e.g. a pair around its mean) to the lower index
            dist = d[members, j]
            k = int(members[torch.nonzero(dist - dist.min() <= 1e-9 * max(1.0, float(dist.min())))[0, 0]])
            if k not in chosen:
                chosen.append(k)
    chosen += [k for k in spread if k not in chosen][:n - len(chosen)]
    chosen += [k for k in range(total) if k not in chosen][:n - len(chosen)]
    return sorted(chosen)


def _gp_scores(f: torch.Tensor, known: list[int], s: torch.Tensor) -> torch.Tensor:
    """Posterior mean of a GP with constant mean (the measured scores' mean) and kernel exp(-d^2 / l),
    l = 0.5 * median squared distance over pairs of distinct measured maps (closer than 1e-9: the same
    map), clipped to the measured scores' range; the measured scores kept."""
    fk = f[known]
    d = ((fk[:, None, :] - fk[None, :, :]) ** 2).sum(-1)  # exact zeros for equal maps (no matmul form)
    upper = torch.triu_indices(len(known), len(known), offset=1)
    distinct = d[upper[0], upper[1]]
    distinct = distinct[distinct > 1e-9]
    mean = s.mean()
    out = torch.full((len(f),), float(mean), dtype=torch.float64)
    if len(distinct):
        length = 0.5 * torch.quantile(distinct, 0.5)
        w = torch.linalg.solve(torch.exp(-d / length) + 1e-3 * torch.eye(len(known), dtype=torch.float64),
                               s - mean)
        out = torch.exp(-((f[:, None, :] - fk[None, :, :]) ** 2).sum(-1) / length) @ w + mean
        out = out.clamp(float(s.min()), float(s.max()))
    out[known] = s
    return out


def sise_reference(model, taps, x: np.ndarray, target: int, *, mu: float = 0.0, adaptive: bool = False,
                   cap: int | None = None, batch: int = 64, autocast: bool = False,
                   score_fraction: float = 1.0, predict: bool = True, psi=None, score=None,
                   channels_last: bool = False):
    """Returns (layer maps list (None for a skipped block), fused map, masks scored per block).

    ``psi(output)``: the scalar differentiated, from the model's output for the image (default: the softmax
    probability of ``target``); ``score(outputs)``: each masked image's score [M] from the model's
    outputs for them (default: the same probability). A detection's are in :func:`detection_scores`.

    With ``score_fraction`` < 1, per block max(2, floor(fraction * maps)) maps are scored (k-means
    representatives of the maps at their own resolution) and the others' scores are a Gaussian process's
    prediction from them (or 0 without ``predict``: the layer map of the scored maps alone).

    Runs on the model's device; ``autocast`` runs the per-mask forward passes in float16 autocast (or in
    the dtype it names, e.g. torch.bfloat16); ``channels_last`` hands the masked batches over in that
    memory format (for a model converted to it).

    ``taps`` are module paths, or "path#k" for the k-th call of a module that runs more than once.
    """
    x = torch.from_numpy(x).to(next(model.parameters()).device)
    modules = dict(model.named_modules())
    calls: dict[str, list] = {}
    names = {t.split("#")[0] for t in taps}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: calls.setdefault(n, []).append(o))
             for n in names]
    psi = psi or (lambda out: torch.softmax(out, 1)[0, target])
    score = score or (lambda out: torch.softmax(out, 1)[:, target])
    try:
        psi = psi(model(x))
    finally:
        for h in hooks:
            h.remove()
    acts = {t: calls[t.split("#")[0]][int(t.split("#")[1]) if "#" in t else 0] for t in taps}
    grads = torch.autograd.grad(psi, [acts[t] for t in taps])
    height, width = x.shape[2:]
    layer_maps, counts = [], []
    for t, g in zip(taps, grads):
        a = acts[t].detach()[0]
        alpha = g[0].mean((1, 2))
        beta = alpha.max()
        if beta <= 0:
            layer_maps.append(None)
            counts.append(0)
            continue
        if adaptive:
            norm = alpha / beta
            keep = norm > otsu_reference(norm[norm > 0])
        else:
            keep = alpha > mu * beta
        idx = torch.nonzero(keep).flatten()
        up = F.interpolate(a[idx][None], size=(height, width), mode="bilinear", align_corners=False)[0]
        span = up.amax((1, 2)) - up.amin((1, 2))
        good = span > 1e-6
        idx, up, span = idx[good], up[good], span[good]
        order = torch.argsort(alpha[idx], descending=True, stable=True)
        if cap is not None:
            order = order[:cap]
        up, span = up[order], span[order]
        masks = (up - up.amin((1, 2), keepdim=True)) / span[:, None, None]
        if len(masks) == 0:
            counts.append(0)
            layer_maps.append(None)
            continue
        if score_fraction < 1:
            low = a[idx][order].double().flatten(1)
            low = (low - low.amin(1, keepdim=True)) / (low.amax(1, keepdim=True) - low.amin(1, keepdim=True))
            n = min(len(masks), max(2, int(np.floor(score_fraction * len(masks) + 1e-9))))
            known = _kmeans_representatives(low, n)
            measured = _scores(model, x, masks[known], score, batch, autocast, channels_last).double()
            s = _gp_scores(low, known, measured) if predict else torch.zeros(len(masks), dtype=torch.float64)
            s[known] = measured
            s = s.to(masks.dtype)
            counts.append(len(known))
        else:
            s = _scores(model, x, masks, score, batch, autocast, channels_last)
            counts.append(len(masks))
        v = (s[:, None, None] * masks / masks.sum((1, 2), keepdim=True)).sum(0)
        layer_maps.append(normalise(v))
    present = [v for v in layer_maps if v is not None]
    fused = present[0]
    for v in present[1:]:
        fused = (fused + v) * (v > otsu_reference(v)).to(fused.dtype)
    return ([None if v is None else v.cpu().numpy() for v in layer_maps], normalise(fused).cpu().numpy(),
            counts)


def detection_scores(canonical, anchor: int, cls: int, box):
    """(psi, score) for explaining one detection: psi the detection's own score, objectness x class
    probability at (anchor, cls); score each masked image's D-RISE similarity to it (Petsiuk et al.,
    CVPR 2021): the best over its anchors of IoU with ``box`` (x1, y1, x2, y2) x cosine of its class
    probabilities with the one-hot ``cls`` x objectness. ``canonical(output)`` -> boxes [M, A, 4] (x1, y1,
    x2, y2), classes [M, A, C], objectness [M, A] in torch."""
    box = torch.as_tensor(box, dtype=torch.float32)

    def psi(out):
        _, classes, objectness = canonical(out)
        return objectness[0, anchor] * classes[0, anchor, cls]

    def score(out):
        boxes, classes, objectness = canonical(out)
        low = torch.maximum(boxes[..., :2], box[:2])
        high = torch.minimum(boxes[..., 2:], box[2:])
        inter = (high - low).clamp(min=0).prod(-1)
        area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)
        union = area + (box[2:] - box[:2]).clamp(min=0).prod() - inter
        cosine = classes[..., cls] / classes.norm(dim=-1).clamp(min=1e-12)
        return (inter / union.clamp(min=1e-12) * cosine * objectness).amax(1)
    return psi, score
