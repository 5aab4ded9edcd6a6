#!/usr/bin/env python3
"""Load a model written by `wick export --format safetensors` into fastai's xresnet.

Usage:
    python scripts/load_export_fastai.py runs/mine/export [IMAGE ...]

Builds `fastai.vision.models.xresnet.<arch>(n_out=K, widen=W)`, loads `model.safetensors`
(PyTorch state-dict names, BatchNorm statistics included) with `strict=True`, and prints each
image's top-3 classes using the preprocessing in `model.json` (resize the shorter side,
centre crop, /255, Normalize). With no image it prints the state dict's tensor count and the
logits of one zero image, to show the model loaded.

Needs: torch, fastai, safetensors, pillow, numpy.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from fastai.vision.models import xresnet
from safetensors.torch import load_file


def load_model(folder):
    """fastai's xresnet with the exported weights (eval mode), and the preprocessing of one
    HWC uint8 image into a CHW float tensor."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    build = getattr(xresnet, meta["arch"])
    model = build(n_out=meta["n_out"], widen=meta["widen"]).eval()
    model.load_state_dict(load_file(str(folder / meta["weights"])), strict=True)
    norm = meta["preprocessing"]["normalize"]

    def prepare(pixels):
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255
        if norm is not None:
            x = (x - torch.tensor(norm["mean"]).view(3, 1, 1)) / torch.tensor(norm["std"]).view(3, 1, 1)
        return x

    return model, prepare


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[1])
    meta = json.loads((folder / "model.json").read_text())
    build = getattr(xresnet, meta["arch"])
    model = build(n_out=meta["n_out"], widen=meta["widen"]).eval()
    state = load_file(str(folder / meta["weights"]))
    model.load_state_dict(state, strict=True)
    size = meta["input_size"]
    norm = meta["preprocessing"]["normalize"]

    def prepare(pixels):
        x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        if norm is not None:
            x = (x - torch.tensor(norm["mean"]).view(3, 1, 1)) / torch.tensor(norm["std"]).view(3, 1, 1)
        return x

    if len(argv) == 2:
        with torch.no_grad():
            logits = model(prepare(np.zeros((size, size, 3), dtype=np.uint8))[None])
        print(f"loaded {len(state)} tensors into {meta['arch']}; logits of a black image: {logits[0].tolist()}")
        return 0
    from PIL import Image

    for path in argv[2:]:
        image = Image.open(path).convert("RGB")
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
        with torch.no_grad():
            p = model(prepare(pixels)[None]).softmax(dim=1)[0]
        top = torch.argsort(p, descending=True)[:3]
        print(f"{path}: " + ", ".join(f"{meta['classes'][k]} {p[k]:.4f}" for k in top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
