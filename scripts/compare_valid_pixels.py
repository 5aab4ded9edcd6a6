"""wick's validation images beside fastai 2.8's, pixel by pixel, on real files (decision 0001).

    .venv/bin/python scripts/compare_valid_pixels.py --data ../shared/data/imagenette2-224 \
        --sizes 96:48,96:32 --count 32

For each ITEM:SIZE pair, fastai's `Resize(ITEM)` + `aug_transforms(size=SIZE, min_scale=0.75)`
in validation mode (dls.valid, no Normalize) and wick's `ItemPipeline::load_plain` (through
`cargo run --release -p wick-data --example valid_dump`) on every 100th file of `val/` (up to
--count); prints the mean and largest absolute differences (values in [0, 1]) and each side's
high-frequency content (mean |pixel − mean of its 4 neighbours|), which shows which side is
sharper. Needs fastai 2.8, torch, numpy; runs cargo from the repository root.
"""
import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, IndexSplitter, Resize,
                               aug_transforms, parent_label)


def high_frequency(x):
    centre = x[:, :, 1:-1, 1:-1]
    around = (x[:, :, :-2, 1:-1] + x[:, :, 2:, 1:-1] + x[:, :, 1:-1, :-2] + x[:, :, 1:-1, 2:]) / 4
    return float(np.abs(centre - around).mean())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--sizes", default="96:48,96:32")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--three-pass", action="store_true",
                        help="wick's Resampling::ThreePass (fastai's order) instead of its one pass")
    args = parser.parse_args()
    files = sorted((args.data / "val").glob("*/*.JPEG"))[::100][: args.count]
    # One training file per class keeps fastai's vocab complete; they are not compared.
    classes = sorted(p.name for p in (args.data / "train").iterdir() if p.is_dir())
    extra = [sorted((args.data / "train" / c).glob("*.JPEG"))[0] for c in classes]
    scratch = Path(tempfile.mkdtemp(prefix="wick-valid-pixels-"))
    listing = scratch / "files.txt"
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    for pair in args.sizes.split(","):
        item, size = (int(v) for v in pair.split(":"))
        block = DataBlock(blocks=(ImageBlock(), CategoryBlock()), get_items=lambda _: files + extra,
                          get_y=parent_label, splitter=IndexSplitter(list(range(len(files)))),
                          item_tfms=Resize(item), batch_tfms=aug_transforms(size=size, min_scale=0.75))
        dls = block.dataloaders(args.data, bs=len(files), num_workers=0, device="cpu")
        fastai = dls.valid.one_batch()[0].numpy().astype(np.float32)
        out = scratch / f"wick_{item}_{size}.f32"
        subprocess.run(["cargo", "run", "-q", "--release", "-p", "wick-data", "--example", "valid_dump",
                        "--", str(listing), str(item), str(size), *(["--three-pass"] if args.three_pass else []),
                        str(out)], check=True)
        wick = np.fromfile(out, dtype="<f4").reshape(fastai.shape)
        diff = np.abs(fastai - wick)
        print(f"{item} -> {size} px, {len(files)} images: mean |diff| {diff.mean():.4f}, "
              f"99th percentile {np.percentile(diff, 99):.3f}, max {diff.max():.3f}; "
              f"high-frequency content fastai {high_frequency(fastai):.4f}, wick {high_frequency(wick):.4f}")


if __name__ == "__main__":
    main()
