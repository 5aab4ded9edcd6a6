"""fastai 2.8 itself on the chapter-7 experiments, scaled like wick's `quick` profile, so
wick's accuracies can be put beside the reference implementation's on the same data and
machine (docs/fastai-comparison.md).

    .venv-anchor/bin/python scripts/fastai_reference.py --data ../shared/data/imagenette2-224 \
        --experiments baseline,progressive --seed 42 --out runs/fastai-quick

The scaled recipe mirrors recipes/chapter7/*.toml [profiles.quick]: xresnet18(n_out=10),
Resize(96) + aug_transforms(size=48, min_scale=0.75), bs 64, fit_one_cycle(5, 3e-3) on a
seeded half of the images with RandomSplitter(0.2, seed); progressive: 32 px (bs 128)
fit_one_cycle(4, 3e-3), then a new split at 48 px (bs 64) fine_tune(5, 1e-3); tta: learn.tta()
on progressive's model. The subset and the split are drawn with numpy/torch generators, so
they are the same size as wick's but not the same images. CPU, 2 threads.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from fastai.vision.all import (CategoryBlock, CrossEntropyLossFlat, DataBlock, ImageBlock,
                               LabelSmoothingCrossEntropy, Learner, MixUp, Normalize,
                               RandomSplitter, Resize, accuracy, aug_transforms,
                               get_image_files, imagenet_stats, parent_label, xresnet18)

QUICK = dict(item_size=96, size=48, bs=64, subset=0.5, epochs=5, lr=3e-3)


def items_fn(subset, seed):
    def get_items(path):
        files = sorted(get_image_files(path))
        rng = np.random.default_rng(seed)
        keep = rng.permutation(len(files))[: int(round(len(files) * subset))]
        return [files[i] for i in sorted(keep)]
    return get_items


def dls(path, bs, size, normalize, seed, split_seed):
    tfms = [*aug_transforms(size=size, min_scale=0.75)]
    if normalize:
        tfms.append(Normalize.from_stats(*imagenet_stats))
    block = DataBlock(blocks=(ImageBlock(), CategoryBlock()), get_items=items_fn(QUICK["subset"], seed),
                      get_y=parent_label, splitter=RandomSplitter(valid_pct=0.2, seed=split_seed),
                      item_tfms=Resize(QUICK["item_size"]), batch_tfms=tfms)
    return block.dataloaders(path, bs=bs, num_workers=0, device="cpu")


def final_accuracy(learn):
    return float(learn.recorder.values[-1][2])


def run(name, path, seed, out):
    torch.manual_seed(seed)
    start = time.time()
    result = {"name": name, "seed": seed}
    if name in ("baseline", "normalize", "mixup", "label_smoothing"):
        data = dls(path, QUICK["bs"], QUICK["size"], name != "baseline", seed, seed)
        loss = LabelSmoothingCrossEntropy() if name == "label_smoothing" else CrossEntropyLossFlat()
        cbs = [MixUp()] if name == "mixup" else []
        learn = Learner(data, xresnet18(n_out=data.c), loss_func=loss, metrics=accuracy, cbs=cbs)
        learn.fit_one_cycle(QUICK["epochs"], QUICK["lr"])
        result["accuracy"] = final_accuracy(learn)
    elif name in ("progressive", "tta"):
        data = dls(path, 128, 32, True, seed, seed)
        learn = Learner(data, xresnet18(n_out=data.c), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
        learn.fit_one_cycle(4, QUICK["lr"])
        learn.dls = dls(path, 64, 48, True, seed, seed + 1000)
        learn.fine_tune(5, 1e-3)
        result["accuracy"] = final_accuracy(learn)
        preds, targs = learn.tta()
        result["tta_accuracy"] = float(accuracy(preds, targs))
    else:
        raise SystemExit(f"unknown experiment {name}")
    result["seconds"] = time.time() - start
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--experiments", default="baseline,normalize,progressive,mixup,label_smoothing")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="runs/fastai-quick")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.experiments.split(","):
        run(name, args.data, args.seed, args.out)


if __name__ == "__main__":
    main()
