#!/usr/bin/env python3
"""Run a model written by `wick export --format onnx` with onnxruntime (from PyPI).

Usage:
    python scripts/check_onnx.py runs/mine/model.onnx IMAGE [IMAGE ...]
    python scripts/check_onnx.py runs/mine/model.onnx --logits-of-seeded-images N SEED

The first form prints each image's top-3 classes: the image is resized so that its shorter
side is the model's input size and centre-cropped (fastai's validation transform), as the
model's metadata says; everything after that (byte/255, Normalize, NHWC->NCHW) is inside the
graph. The second form prints the logits of N seeded random uint8 images as JSON, for a
comparison with `wick`'s own (tests and docs/export.md use it).

Needs: onnxruntime, numpy, pillow.
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
    if argv[2] == "--logits-of-seeded-images":
        n, seed = int(argv[3]), int(argv[4])
        images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        logits, _ = session.run(None, {"image": images})
        print(json.dumps(logits.tolist()))
        return 0
    batch = np.stack([prepare(path, size) for path in argv[2:]])
    _, probabilities = session.run(None, {"image": batch})
    for path, p in zip(argv[2:], probabilities):
        top = np.argsort(-p)[:3]
        print(f"{path}: " + ", ".join(f"{classes[k]} {p[k]:.4f}" for k in top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
