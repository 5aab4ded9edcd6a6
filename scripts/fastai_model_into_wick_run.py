"""Put a fastai-trained xresnet into a copy of a wick run, so that `wick eval` and `wick tta`
score it with wick's own validation pipeline and TTA (docs/fastai-comparison.md, "The
official split"): the reverse of `wick export`.

    .venv/bin/python scripts/fastai_reference.py --data ../shared/data/imagenette2-224 \
        --split folders --experiments progressive --seed 42 --save-model --out FASTAI
    .venv/bin/python scripts/fastai_model_into_wick_run.py --model FASTAI/progressive.safetensors \
        --like runs/official-progressive --out runs/fastai-in-wick
    wick eval --run runs/fastai-in-wick
    wick tta --run runs/fastai-in-wick --out runs/fastai-in-wick-tta --recipe recipes/chapter7/tta.toml

`--like` is a finished wick run of the same architecture, classes and data (its recipe,
validation list and vocabulary are kept; its training checkpoint, results and pictures are
not copied). wick's
weights file uses PyTorch's state-dict names already, so the tensors go in as they are; the
script checks every name, shape and dtype against the wick run's weights, and the class
order against its vocabulary, and writes the file with wick's metadata and its `wick.sha256`
(SHA-256 over each tensor's name, dtype, shape and bytes in name order, each length-prefixed;
`wick-io`'s `checksum`). Needs torch and safetensors.
"""
import argparse
import hashlib
import json
import shutil
import struct
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def header(path):
    raw = Path(path).read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def wick_checksum(path):
    """wick-io's `checksum` of a safetensors file's tensors, from its bytes."""
    tensors, data = header(path)
    tensors.pop("__metadata__", None)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        entry = tensors[name]
        start, end = entry["data_offsets"]
        for part in (name.encode(), entry["dtype"].encode()):
            digest.update(struct.pack("<Q", len(part)))
            digest.update(part)
        digest.update(struct.pack("<Q", len(entry["shape"])))
        for dim in entry["shape"]:
            digest.update(struct.pack("<Q", dim))
        digest.update(struct.pack("<Q", end - start))
        digest.update(data[start:end])
    return digest.hexdigest()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--like", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose a new folder")

    wick_weights = args.like / "model.safetensors"
    wick_tensors, _ = header(wick_weights)
    wick_tensors.pop("__metadata__", None)
    with safe_open(str(wick_weights), "pt") as f:
        metadata = dict(f.metadata())
    if wick_checksum(wick_weights) != metadata.get("wick.sha256"):
        raise SystemExit(f"{wick_weights}: the checksum scheme does not reproduce wick's")

    tensors = load_file(str(args.model))
    fastai_header, _ = header(args.model)
    if sorted(tensors) != sorted(wick_tensors):
        missing = sorted(set(wick_tensors) - set(tensors))[:8]
        extra = sorted(set(tensors) - set(wick_tensors))[:8]
        raise SystemExit(f"{args.model}: names differ from wick's (missing {missing}, extra {extra})")
    for name, entry in wick_tensors.items():
        theirs = fastai_header[name]
        if (theirs["shape"], theirs["dtype"]) != (entry["shape"], entry["dtype"]):
            raise SystemExit(f"{name}: {theirs['dtype']} {theirs['shape']} in {args.model}, "
                             f"{entry['dtype']} {entry['shape']} in wick's run")
    vocab = json.loads(args.model.with_suffix(".vocab.json").read_text())
    wick_vocab = (args.like / "vocab.txt").read_text().split()
    if vocab != wick_vocab:
        raise SystemExit(f"class order differs: {vocab} against wick's {wick_vocab}")

    shutil.copytree(args.like, args.out,
                    ignore=shutil.ignore_patterns("checkpoint.safetensors", "stage-*", "result.json",
                                                  "eval.json", "*.png"))
    weights = args.out / "model.safetensors"
    save_file(tensors, str(weights), metadata=metadata)
    metadata["wick.sha256"] = wick_checksum(weights)
    save_file(tensors, str(weights), metadata=metadata)
    print(f"wrote {weights} (fastai's {args.model}) in a copy of {args.like}")


if __name__ == "__main__":
    main()
