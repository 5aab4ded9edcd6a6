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

`--split folders` mirrors [profiles.official] instead: all images, Imagenette's own train/ and
val/ folders (GrandparentSplitter; 9,469 / 3,925 images), the same split for both stages of
progressive resizing; everything else as above.

`--save-model` also writes each experiment's trained model as `<out>/<name>.safetensors` (its
PyTorch state dict) and its class order as `<out>/<name>.vocab.json`, for
`scripts/fastai_model_wick_pixels.py` (a fastai-trained model on wick's validation images).
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from fastai.vision.all import (CategoryBlock, CrossEntropyLossFlat, DataBlock, ImageBlock,
                               GrandparentSplitter, LabelSmoothingCrossEntropy, Learner,
                               MixUp, Normalize, RandomSplitter, Resize, accuracy, aug_transforms,
                               get_image_files, imagenet_stats, parent_label, xresnet18)

QUICK = dict(item_size=96, size=48, bs=64, subset=0.5, epochs=5, lr=3e-3)


def items_fn(subset, seed):
    def get_items(path):
        files = sorted(get_image_files(path))
        rng = np.random.default_rng(seed)
        keep = rng.permutation(len(files))[: int(round(len(files) * subset))]
        return [files[i] for i in sorted(keep)]
    return get_items


def dls(path, bs, size, normalize, seed, split_seed, split):
    tfms = [*aug_transforms(size=size, min_scale=0.75)]
    if normalize:
        tfms.append(Normalize.from_stats(*imagenet_stats))
    if split == "folders":
        get_items, splitter = get_image_files, GrandparentSplitter(train_name="train", valid_name="val")
    else:
        get_items = items_fn(QUICK["subset"], seed)
        splitter = RandomSplitter(valid_pct=0.2, seed=split_seed)
    block = DataBlock(blocks=(ImageBlock(), CategoryBlock()), get_items=get_items,
                      get_y=parent_label, splitter=splitter,
                      item_tfms=Resize(QUICK["item_size"]), batch_tfms=tfms)
    return block.dataloaders(path, bs=bs, num_workers=0, device="cpu")


def final_accuracy(learn):
    return float(learn.recorder.values[-1][2])


def save_model(learn, name, out):
    """The trained model's state dict and class order, beside the result."""
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in learn.model.state_dict().items()}
    save_file(state, os.path.join(out, f"{name}.safetensors"))
    with open(os.path.join(out, f"{name}.vocab.json"), "w") as f:
        json.dump(list(learn.dls.vocab), f)


def run(name, path, seed, out, split, save=False):
    torch.manual_seed(seed)
    start = time.time()
    result = {"name": name, "seed": seed, "split": split}
    if name in ("baseline", "normalize", "mixup", "label_smoothing"):
        data = dls(path, QUICK["bs"], QUICK["size"], name != "baseline", seed, seed, split)
        loss = LabelSmoothingCrossEntropy() if name == "label_smoothing" else CrossEntropyLossFlat()
        cbs = [MixUp()] if name == "mixup" else []
        learn = Learner(data, xresnet18(n_out=data.c), loss_func=loss, metrics=accuracy, cbs=cbs)
        learn.fit_one_cycle(QUICK["epochs"], QUICK["lr"])
        result["accuracy"] = final_accuracy(learn)
        result["n_valid"] = len(learn.dls.valid_ds)
        if save:
            save_model(learn, name, out)
    elif name in ("progressive", "tta"):
        data = dls(path, 128, 32, True, seed, seed, split)
        learn = Learner(data, xresnet18(n_out=data.c), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
        learn.fit_one_cycle(4, QUICK["lr"])
        learn.dls = dls(path, 64, 48, True, seed, seed + 1000, split)
        learn.fine_tune(5, 1e-3)
        result["accuracy"] = final_accuracy(learn)
        result["n_valid"] = len(learn.dls.valid_ds)
        if save:
            save_model(learn, name, out)
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
    parser.add_argument("--split", choices=["random", "folders"], default="random",
                        help="random: the quick profile's seeded half; folders: [profiles.official]")
    parser.add_argument("--save-model", action="store_true",
                        help="also write each trained model (state dict) and its class order")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.experiments.split(","):
        run(name, args.data, args.seed, args.out, args.split, args.save_model)


if __name__ == "__main__":
    main()
