#!/usr/bin/env python3
"""Re-encode an Imagenette copy into a compact tar for the GPU check (cargo xtask gpu-pack).

Every image under --src/{train,val}/<class>/ is resized to --size x --size (Lanczos; the shared
imagenette2-224 copy is already square) and saved as a baseline JPEG of --quality, keeping the
relative paths, with optimized Huffman tables (about 8% smaller, same pixels), into a gzipped tar:
the JPEG data hardly compresses, but gzip removes tar's per-file header padding (about 10 MiB of
13,394 files). Needs Pillow.
"""
import argparse
import io
import os
import tarfile

from PIL import Image


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--quality", type=int, default=65)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    files = []
    for split in ("train", "val"):
        for dirpath, _, names in os.walk(os.path.join(args.src, split)):
            files += [os.path.join(dirpath, n) for n in names if n.lower().endswith((".jpeg", ".jpg", ".png"))]
    files.sort()
    if not files:
        raise SystemExit(f"no images under {args.src}/train or {args.src}/val")
    tmp = args.out + ".partial"
    total = 0
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for path in files:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((args.size, args.size), Image.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=args.quality, optimize=True)
            data = buf.getvalue()
            total += len(data)
            info = tarfile.TarInfo(os.path.relpath(path, args.src))
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"{len(files)} images, {total / 2**20:.1f} MiB of JPEG at {args.size} px q{args.quality} -> {args.out}")


if __name__ == "__main__":
    main()
