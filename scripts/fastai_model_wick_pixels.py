"""A fastai-trained model scored on wick's validation images beside fastai's own, the other
half of `scripts/tta_paired.py` (which scores a wick-trained model in fastai): with both, the
validation pipeline's effect on the plain accuracy is measured from both sides (decision 0001,
docs/fastai-comparison.md).

    .venv/bin/python scripts/fastai_reference.py --data ../shared/data/imagenette2-224 \
        --split folders --experiments progressive --seed 42 --save-model --out DIR
    .venv/bin/python scripts/fastai_model_wick_pixels.py --model DIR/progressive.safetensors \
        --data ../shared/data/imagenette2-224 --out DIR/progressive.wick_pixels.json

Every image of `val/` (Imagenette's official split, what `--split folders` validates on) goes
through fastai's validation pipeline (`Resize(ITEM)` + `aug_transforms(size=SIZE,
min_scale=0.75)` in validation mode, Normalize with ImageNet statistics) and through wick's
(`cargo run --release -p wick-data --example valid_dump`, then the same Normalize); the model
(`xresnet18(n_out=K)`, its state dict and `<model>.vocab.json` from `--save-model`) scores
both. Prints and writes both accuracies. Runs cargo from the repository root. Needs torch,
fastai 2.8, safetensors, numpy.
"""
import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, IndexSplitter, Normalize,
                               Resize, aug_transforms, imagenet_stats, parent_label, xresnet18)
from safetensors.torch import load_file


def accuracy(model, images, labels, batch=256):
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            logits = model(images[start:start + batch])
            correct += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return correct / len(labels)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--item-size", type=int, default=96)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    vocab = json.loads(args.model.with_suffix(".vocab.json").read_text())
    model = xresnet18(n_out=len(vocab))
    model.load_state_dict(load_file(str(args.model)), strict=True)
    model.eval()

    files = sorted((args.data / "val").glob("*/*.JPEG"))
    labels = torch.tensor([vocab.index(f.parent.name) for f in files])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in imagenet_stats)

    # fastai's validation images: its DataBlock, every file in the validation split (one
    # training file per class keeps the training split non-empty; it is not scored).
    extra = [sorted((args.data / "train" / c).glob("*.JPEG"))[0] for c in vocab]
    block = DataBlock(blocks=(ImageBlock(), CategoryBlock(vocab=vocab)),
                      get_items=lambda _: files + extra,
                      get_y=parent_label, splitter=IndexSplitter(list(range(len(files)))),
                      item_tfms=Resize(args.item_size),
                      batch_tfms=[*aug_transforms(size=args.size, min_scale=0.75),
                                  Normalize.from_stats(*imagenet_stats)])
    dls = block.dataloaders(args.data, bs=256, num_workers=0, device="cpu")
    batches = [(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)) for x, y in dls.valid]
    fastai_images = torch.cat([x for x, _ in batches])
    fastai_labels = torch.cat([y for _, y in batches])

    # wick's validation images of the same files, in the same order.
    scratch = Path(tempfile.mkdtemp(prefix="wick-pixels-"))
    listing = scratch / "files.txt"
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    raw = scratch / "wick.f32"
    subprocess.run(["cargo", "run", "-q", "--release", "-p", "wick-data", "--example", "valid_dump",
                    "--", str(listing), str(args.item_size), str(args.size), str(raw)], check=True)
    wick = torch.from_numpy(np.fromfile(raw, dtype="<f4").reshape(len(files), 3, args.size, args.size))
    wick_images = (wick - mean) / std

    result = {
        "model": str(args.model),
        "n_images": len(files),
        "item_size": args.item_size,
        "size": args.size,
        "fastai_pixels_accuracy": accuracy(model, fastai_images, fastai_labels),
        "wick_pixels_accuracy": accuracy(model, wick_images, labels),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
