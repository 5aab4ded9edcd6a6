"""The distribution of wick's training augmentation beside fastai 2.8's, on a coordinate image.

    .venv/bin/python scripts/compare_train_augment.py --item-size 96 --size 48 --repeats 2048

A 224 x 224 PNG whose red channel encodes x and green y (blue constant) goes through both
libraries' training pipelines, `Resize(ITEM)` + `aug_transforms(size=SIZE, min_scale=0.75,
max_lighting=0)` (lighting off, so that the colours stay coordinates): fastai's `dls.train`
(batches of 64, no Normalize) and wick's `ItemPipeline::load_bytes` in `Mode::Train` (through
`cargo run --release -p wick-data --example train_dump`), REPEATS draws each. Every output
image is fitted with an affine map from output pixel to source pixel (least squares over the
pixels that are not reflection padding); the script prints, per library, the quantiles of the
map's scale (source pixels per output pixel), rotation, flip rate, the output centre's source
position, the warp (the fit's residual) and the share of padded pixels, a two-sample
Kolmogorov-Smirnov p-value per statistic, and how the scale's spread splits between and
within batches (fastai draws one crop per batch). `--three-pass`: wick in fastai's resampling
order (`data.resampling = "three_pass"`). Needs fastai 2.8, torch, numpy, scipy; runs cargo
from the repository root.
"""
import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Resize, aug_transforms,
                               set_seed)
from PIL import Image
from scipy.stats import ks_2samp

SOURCE = 224


def coordinate_image(path):
    x = np.round(np.arange(SOURCE) * 255 / (SOURCE - 1)).astype(np.uint8)
    image = np.empty((SOURCE, SOURCE, 3), np.uint8)
    image[:, :, 0] = x[None, :]
    image[:, :, 1] = x[:, None]
    image[:, :, 2] = 128
    Image.fromarray(image).save(path)


def statistics(batch):
    """Per image: scale, rotation (degrees), flipped, centre x, centre y, residual, padded share."""
    n, _, size, _ = batch.shape
    jj, ii = np.meshgrid(np.arange(size), np.arange(size))
    design = np.stack([jj.ravel(), ii.ravel(), np.ones(size * size)], axis=1)
    rows = []
    for image in batch:
        u = image[0].ravel() * (SOURCE - 1)
        v = image[1].ravel() * (SOURCE - 1)
        # Reflection padding folds the map back at the source's edges: fit, drop pixels near
        # an edge or far off the fit, refit.
        keep = (u > 1) & (u < SOURCE - 2) & (v > 1) & (v < SOURCE - 2)
        for _ in range(2):
            coef_u, *_ = np.linalg.lstsq(design[keep], u[keep], rcond=None)
            coef_v, *_ = np.linalg.lstsq(design[keep], v[keep], rcond=None)
            resid = np.hypot(design @ coef_u - u, design @ coef_v - v)
            keep = keep & (resid < 3 * max(np.median(resid[keep]), 0.25))
        a, b = coef_u[0], coef_u[1]
        c, d = coef_v[0], coef_v[1]
        det = a * d - b * c
        centre = np.array([(size - 1) / 2, (size - 1) / 2, 1.0])
        rows.append([np.sqrt(abs(det)), np.degrees(np.arctan2(c, a if det > 0 else -a)),
                     float(det < 0), centre @ coef_u, centre @ coef_v,
                     float(np.mean(resid[keep])), 1 - keep.mean()])
    return np.array(rows)


NAMES = ["scale", "rotation", "flipped", "centre x", "centre y", "residual", "padded"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--item-size", type=int, default=96)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2048)
    parser.add_argument("--three-pass", action="store_true",
                        help="wick's Resampling::ThreePass (fastai's order) instead of its one pass")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wick-train-augment-"))
    source = scratch / "coords.png"
    coordinate_image(source)
    set_seed(0)
    block = DataBlock(blocks=(ImageBlock(), CategoryBlock()),
                      get_items=lambda _: [source] * (args.repeats + 1), get_y=lambda _: "a",
                      splitter=lambda items: (list(range(len(items) - 1)), [len(items) - 1]),
                      item_tfms=Resize(args.item_size),
                      batch_tfms=aug_transforms(size=args.size, min_scale=0.75, max_lighting=0))
    dls = block.dataloaders(scratch, bs=64, num_workers=0, device="cpu")
    fastai = np.concatenate([x.numpy() for x, _ in dls.train]).astype(np.float32)
    out = scratch / "wick.f32"
    subprocess.run(["cargo", "run", "-q", "--release", "-p", "wick-data", "--example", "train_dump",
                    "--", str(source), str(args.item_size), str(args.size), str(len(fastai)), "0",
                    "--no-lighting", *(["--three-pass"] if args.three_pass else []), str(out)], check=True)
    wick = np.fromfile(out, dtype="<f4").reshape(fastai.shape)
    sf, sw = statistics(fastai), statistics(wick)
    print(f"{args.item_size} -> {args.size} px, {len(fastai)} draws a side")
    print(f"{'statistic':<10} {'fastai 5/25/50/75/95%':<38} {'wick 5/25/50/75/95%':<38} KS p")
    for k, name in enumerate(NAMES):
        qf = np.percentile(sf[:, k], [5, 25, 50, 75, 95])
        qw = np.percentile(sw[:, k], [5, 25, 50, 75, 95])
        fmt = lambda q: " ".join(f"{v:6.2f}" for v in q)
        print(f"{name:<10} {fmt(qf):<38} {fmt(qw):<38} {ks_2samp(sf[:, k], sw[:, k]).pvalue:.3g}")
    # fastai's RandomResizedCropGPU draws one crop per batch (Python's `random` in before_call),
    # wick one per image: the same spread in all, split differently between and within batches.
    for name, stats in (("fastai", sf), ("wick", sw)):
        scale = stats[: len(stats) // 64 * 64, 0].reshape(-1, 64)
        print(f"{name}: scale sd within batches of 64 {scale.std(axis=1).mean():.3f}, "
              f"of the batch means {scale.mean(axis=1).std():.3f}")


if __name__ == "__main__":
    main()
