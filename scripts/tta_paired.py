"""fastai 2.8's own `learn.validate()` and `learn.tta()` on a model wick trained, over the very
validation images wick used, so wick's TTA gain and fastai's are measured on ONE model and ONE
validation set (docs/fastai-comparison.md, "TTA on the same model"). Any difference between the
two gains then comes from the test-time pipelines (augmentation, blend), not from training.

    wick export --run RUN --format safetensors --out EXPORT
    .venv/bin/python scripts/tta_paired.py --run RUN --export EXPORT \
        --data ../shared/data/imagenette2-224 --repeats 5 --out RUN/tta_paired.json

RUN is a finished wick training run (its `valid.txt` lists the validation images of the last
stage, `recipe.resolved.toml` gives the last stage's item size, size, batch size and
Normalize). fastai's DataBlock gets exactly those validation items (FuncSplitter) and
`Resize(item_size)` + `aug_transforms(size, min_scale)` (+ Normalize), the recipe's pipeline.
`learn.tta()` is random: it runs `--repeats` times with torch seeds 0, 1, ... and the script
prints each gain and their mean and standard deviation.

Needs: torch, fastai 2.8, safetensors, numpy (the bench stack).
"""
import argparse
import json
import statistics
import tomllib
from pathlib import Path

import torch
from fastai.vision.all import (CategoryBlock, CrossEntropyLossFlat, DataBlock, FuncSplitter,
                               ImageBlock, Learner, Normalize, Resize, accuracy, aug_transforms,
                               imagenet_stats, parent_label)
from fastai.vision.models import xresnet
from safetensors.torch import load_file


def last_stage(recipe):
    """The data settings of the recipe's last stage: its own keys over the [data] table."""
    data = dict(recipe["data"])
    for stage in recipe.get("stage", []):
        for key in ("size", "batch_size", "item_size", "min_scale"):
            if key in stage:
                data[key] = stage[key]
    return data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--export", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)

    recipe = tomllib.loads((args.run / "recipe.resolved.toml").read_text())
    data = last_stage(recipe)
    valid = [args.data / line.split("\t", 1)[1] for line in (args.run / "valid.txt").read_text().splitlines()]
    valid_set = set(valid)
    meta = json.loads((args.export / "model.json").read_text())
    synsets = [name.rsplit("(", 1)[1].rstrip(")") if "(" in name else name for name in meta["classes"]]
    # One training item of each class keeps the vocab (sorted folder names) identical to wick's.
    train = [next(p for p in sorted((args.data / "train" / s).iterdir()) if p not in valid_set) for s in synsets]

    tfms = [*aug_transforms(size=data["size"], min_scale=data["min_scale"])]
    if data.get("normalize"):
        tfms.append(Normalize.from_stats(*imagenet_stats))
    block = DataBlock(blocks=(ImageBlock(), CategoryBlock()), get_items=lambda _: train + valid,
                      get_y=parent_label, splitter=FuncSplitter(lambda p: p in valid_set),
                      item_tfms=Resize(data["item_size"]), batch_tfms=tfms)
    dls = block.dataloaders(args.data, bs=data["batch_size"], num_workers=0, device="cpu")
    if list(dls.vocab) != synsets:
        raise SystemExit(f"vocab {list(dls.vocab)} differs from the export's {synsets}")
    if len(dls.valid_ds) != len(valid):
        raise SystemExit(f"{len(dls.valid_ds)} validation items, valid.txt lists {len(valid)}")

    model = getattr(xresnet, meta["arch"])(n_out=meta["n_out"], widen=meta["widen"])
    model.load_state_dict(load_file(str(args.export / meta["weights"])), strict=True)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    plain_preds, targs = learn.get_preds(ds_idx=1)
    plain = float(accuracy(plain_preds, targs))
    runs = []
    for seed in range(args.repeats):
        torch.manual_seed(seed)
        preds, targs = learn.tta()
        runs.append(float(accuracy(preds, targs)))
        print(f"seed {seed}: tta {runs[-1]:.4f}, gain {runs[-1] - plain:+.4f}", flush=True)
    gains = [r - plain for r in runs]
    result = {
        "run": str(args.run), "n_images": len(valid), "plain_accuracy": plain, "tta_accuracy": runs,
        "gain_mean": statistics.mean(gains), "gain_sd": statistics.stdev(gains) if len(gains) > 1 else 0.0,
        "data": data,
    }
    wick_tta = args.run.parent / "tta" / "result.json"
    if wick_tta.is_file():
        w = json.loads(wick_tta.read_text())
        result["wick"] = {"plain_accuracy": w["plain_accuracy"], "tta_accuracy": w["accuracy"],
                          "gain": w["accuracy"] - w["plain_accuracy"]}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
