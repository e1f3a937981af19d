"""Export torchvision classifiers as a plant would (PyTorch's default dynamo exporter, which writes
``model.onnx`` + ``model.onnx.data``, and the legacy TorchScript exporter), run ``onnx_tools`` on each, and
check every block against torch autograd: the block is matched to the module whose output equals its
activation, and its gradient of the softmax score against torch's.

    pip install --no-deps torchvision==0.28.0        # beside torch 2.13
    python scripts/check_torchvision_models.py shufflenet_v2_x1_0 convnext_tiny --size 96

Random weights (nothing is downloaded). torchvision 0.28's import registers fake ops that torch 2.13
lacks; the script imports it with that registration made a no-op. Prints one line per block and a
summary line per model and exporter; exits 1 when any export fails or any block is off by more than
1e-4 (relative to its largest value).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnx_tools import export_file


def import_torchvision():
    import torch
    from torch import library

    original = library.register_fake
    library.register_fake = lambda *a, **k: (lambda fn: fn)
    try:
        import torchvision
    finally:
        library.register_fake = original
    return torch, torchvision


def run(model_bytes: bytes, feeds: dict, folder: str) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def rel_err(actual, expected) -> float:
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(np.asarray(actual, np.float64) - expected).max()) / scale


def check(torch, net, name: str, exporter: str, size: int, folder: str) -> bool:
    path = os.path.join(folder, f"{name}-{exporter}.onnx")
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(net, (x,), path, verbose=False)
        else:
            torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"])
    start = time.perf_counter()
    try:
        result = export_file(path, path.replace(".onnx", ".sise.onnx"))
    except Exception as e:  # noqa: BLE001 - reported, and the run goes on to the next model
        print(f"REFUSED {name} ({exporter}): {e}")
        return False
    seconds = time.perf_counter() - start
    c = result.contract
    images = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    target = np.zeros((2, c.num_classes), np.float32)
    target[0, 3] = 1
    target[1] = np.random.default_rng(2).uniform(-1, 1, c.num_classes)
    exported = onnx.load(path.replace(".onnx", ".sise.onnx"), load_external_data=False)
    outs = run(exported.SerializeToString(), {c.input_name: images, c.target_input: target}, folder)
    acts = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: acts.__setitem__(n, o))
             for n, m in net.named_modules() if n]
    logits = net(torch.from_numpy(images))
    for h in hooks:
        h.remove()
    loss = (torch.from_numpy(target) * torch.softmax(logits, 1)).sum()
    worst = rel_err(outs[c.output_name], logits.detach().numpy())
    matched = 0
    for b in c.blocks:
        act = outs[b.act_output]
        same = [n for n, o in acts.items() if isinstance(o, torch.Tensor) and tuple(o.shape) == act.shape
                and rel_err(act, o.detach().numpy()) <= 1e-4]
        if not same:
            print(f"  block {b.index} {b.tensor}: no module's output equals it (gradient not checked)")
            continue
        grad = torch.autograd.grad(loss, acts[same[-1]], retain_graph=True)[0].mean((2, 3)).numpy()
        err = rel_err(outs[b.grad_output], grad)
        worst, matched = max(worst, err), matched + 1
        print(f"  block {b.index} {list(b.shape[1:])} = {same[-1]}: gradient error {err:.1e}")
    ok = worst <= 1e-4
    print(f"{'OK' if ok else 'OFF'} {name} ({exporter}): {len(c.blocks)} blocks ({matched} checked), batch "
          f"{c.input_shape[0]}, export {seconds:.1f} s, worst relative error {worst:.1e}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="torchvision model builders, e.g. resnet18 convnext_tiny")
    parser.add_argument("--size", type=int, default=96, help="input height and width (default 96)")
    parser.add_argument("--exporters", default="dynamo,legacy", help="dynamo, legacy or both (default)")
    args = parser.parse_args()
    torch, torchvision = import_torchvision()
    good = True
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            for exporter in args.exporters.split(","):
                torch.manual_seed(0)
                net = getattr(torchvision.models, name)(num_classes=10).eval()
                good &= check(torch, net, name, exporter, args.size, folder)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
