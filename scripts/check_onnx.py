#!/usr/bin/env python3
"""Run a model written by `wick export --format onnx` with onnxruntime (from PyPI).

Usage:
    python scripts/check_onnx.py runs/mine/model.onnx IMAGE [IMAGE ...]
    python scripts/check_onnx.py runs/mine/model.onnx --against-pytorch runs/mine/export

The first form prints each image's top-3 classes: the image is resized so that its shorter
side is the model's input size and centre-cropped (fastai's validation transform), as the
model's metadata says; everything after that (byte/255, Normalize, NHWC->NCHW) is inside the
graph. The second form feeds the same 8 seeded random uint8 images to onnxruntime and to
fastai's xresnet loaded from `wick export --format safetensors` (scripts/load_export_fastai.py,
preprocessing in PyTorch), prints the largest logit difference and exits 1 above 1e-4
(relative to the largest logit, at least 1).

Needs: onnxruntime, numpy, pillow; the second form also torch, fastai, safetensors.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def load(path):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    return session, meta


def prepare(image_path, size):
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    session, meta = load(argv[1])
    size = int(meta["input_size"])
    classes = json.loads(meta["classes"])
    if argv[2] == "--against-pytorch":
        import torch
        from load_export_fastai import load_model

        model, torch_prepare = load_model(argv[3])
        images = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        onnx_logits, _ = session.run(None, {"image": images})
        with torch.no_grad():
            torch_logits = model(torch.stack([torch_prepare(image) for image in images])).numpy()
        difference = float(np.abs(onnx_logits - torch_logits).max())
        scale = max(1.0, float(np.abs(torch_logits).max()))
        print(
            f"onnxruntime {ort.__version__} vs fastai's xresnet in torch {torch.__version__}: "
            f"largest logit difference {difference:.2e} over 8 images (largest logit {scale:.2f})"
        )
        return 0 if difference <= 1e-4 * scale else 1
    batch = np.stack([prepare(path, size) for path in argv[2:]])
    _, probabilities = session.run(None, {"image": batch})
    for path, p in zip(argv[2:], probabilities):
        top = np.argsort(-p)[:3]
        print(f"{path}: " + ", ".join(f"{classes[k]} {p[k]:.4f}" for k in top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
