#!/usr/bin/env python3
"""Performance anchor for the candle reproduction of fastai chapter 7.

wick's copy of ../shared/bench/anchor_bench.py (which is read-only), with a GPU mode for
scripts/gpu-check.sh: `--device cuda` runs the model cases on the GPU (inputs on the
device, a CUDA synchronise closing every timed step), `--amp bf16` runs the forward pass
and the loss under torch.autocast(bfloat16) as fastai's `to_bf16()` does (f32 weights and
optimizer state), and `--cudnn-benchmark` lets cuDNN time its algorithms; and
`--op-split` (train cases) profiles the steps instead of timing them and prints each
convolution shape's per-step ms, for `cargo xtask bench models --profile`. Everything else
is unchanged; on the CPU it measures exactly what the shared script measures.

Measures what a user of the reference stack (PyTorch, optionally fastai)
gets on this machine, so the Rust numbers have a side-by-side baseline:

  * training throughput of xresnet50 (n_out=10, fp32, batch 32) at 64/128/224
    and of xresnet18 at 128: zero_grad + forward + cross-entropy + backward +
    optimizer step on random inputs/labels, images/s from the median step;
  * inference throughput of xresnet50 at 224 (eval mode, no grad, batch 32);
  * PIL JPEG decode + resize throughput on 200 synthetic 500x375 JPEGs
    (cached under $TMPDIR/anchor-jpegs), or on real JPEGs given with
    --jpeg-dir (e.g. the shared Imagenette copy), single process.

One JSON line per case on stdout (plus an "env" line first and a "total"
line last).  Run it with a Python that has torch, torchvision and Pillow
from PyPI (fastai optional); see README.md beside this file.

The xresnet models below are written from the published architecture
description (Bag of Tricks "ResNet-D" + fastai's stem 32/32/64), not copied
from fastai.  `--model-src fastai` uses fastai's own xresnet instead, and
`--verify-fastai` checks that the two agree (parameter counts and outputs
with identical weights).

Examples:
  python anchor_bench.py --quick                 # all but train50_224, ~35 s
  python anchor_bench.py                         # everything, ~2 min
  python anchor_bench.py --cases train50_224,infer50_224 --steps 8
  python anchor_bench.py --verify-fastai --cases none
"""
import argparse
import io
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet the profiler used in env_info

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# xresnet (independent implementation of the architecture)
# ---------------------------------------------------------------------------


def conv_bn(ni, nf, ks, stride=1, act=True, zero_bn=False):
    layers = [
        nn.Conv2d(ni, nf, ks, stride=stride, padding=ks // 2, bias=False),
        nn.BatchNorm2d(nf),
    ]
    nn.init.constant_(layers[1].weight, 0.0 if zero_bn else 1.0)
    nn.init.zeros_(layers[1].bias)
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Block(nn.Module):
    """Residual block.  expansion 1 -> basic (3x3, 3x3); 4 -> bottleneck
    (1x1, 3x3 with the stride, 1x1).  Last BN gamma starts at zero.
    Shortcut: AvgPool2d(2, ceil_mode=True) if strided, then 1x1 conv + BN if
    channel counts differ.  ReLU after the add."""

    def __init__(self, expansion, ni, nh, stride):
        super().__init__()
        nin, nout = ni * expansion, nh * expansion
        if expansion == 1:
            self.convs = nn.Sequential(
                conv_bn(nin, nh, 3, stride),
                conv_bn(nh, nout, 3, act=False, zero_bn=True),
            )
        else:
            self.convs = nn.Sequential(
                conv_bn(nin, nh, 1),
                conv_bn(nh, nh, 3, stride),
                conv_bn(nh, nout, 1, act=False, zero_bn=True),
            )
        sc = []
        if stride != 1:
            sc.append(nn.AvgPool2d(2, ceil_mode=True))
        if nin != nout:
            sc.append(conv_bn(nin, nout, 1, act=False))
        self.shortcut = nn.Sequential(*sc)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.convs(x) + self.shortcut(x))


def xresnet(expansion, layers, n_out=1000, c_in=3, p=0.0):
    stem = [
        conv_bn(c_in, 32, 3, stride=2),
        conv_bn(32, 32, 3),
        conv_bn(32, 64, 3),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    widths = [64 // expansion, 64, 128, 256, 512]
    stages = []
    for i, n in enumerate(layers):
        blocks = []
        for j in range(n):
            ni = widths[i] if j == 0 else widths[i + 1]
            stride = 2 if (j == 0 and i > 0) else 1
            blocks.append(Block(expansion, ni, widths[i + 1], stride))
        stages.append(nn.Sequential(*blocks))
    head = [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(p),
        nn.Linear(widths[-1] * expansion, n_out),
    ]
    model = nn.Sequential(*stem, *stages, *head)
    # Kaiming-normal init for convs and the linear layer, zero biases.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def own_xresnet50(n_out=10):
    return xresnet(4, [3, 4, 6, 3], n_out=n_out)


def own_xresnet18(n_out=10):
    return xresnet(1, [2, 2, 2, 2], n_out=n_out)


def get_model(name, src, n_out=10):
    if src == "fastai":
        import warnings

        warnings.filterwarnings("ignore")
        from fastai.vision.models.xresnet import xresnet18, xresnet50

        return {"xresnet50": xresnet50, "xresnet18": xresnet18}[name](n_out=n_out)
    return {"xresnet50": own_xresnet50, "xresnet18": own_xresnet18}[name](n_out)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def emit(obj):
    print(json.dumps(obj), flush=True)


def make_opt(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    # fastai's default optimizer is Adam(mom=0.9, sqr_mom=0.99, eps=1e-5,
    # wd=0.01 decoupled) == torch AdamW with these settings.
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)


def timed_loop(fn, warmup, steps, budget_s, min_steps):
    for _ in range(warmup):
        fn()
    times = []
    t_all = time.perf_counter()
    while len(times) < steps:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_steps and time.perf_counter() - t_all > budget_s:
            break
    return times


def summarize(times, per_iter_items):
    med = statistics.median(times)
    return {
        "median_s": round(med, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "steps_timed": len(times),
        "items_per_s": round(per_iter_items / med, 2),
        "step_times_s": [round(t, 4) for t in times],
    }


# ---------------------------------------------------------------------------
# model cases
# ---------------------------------------------------------------------------


def autocast(args):
    """bf16 autocast on the chosen device (--amp bf16), else a no-op context."""
    import contextlib
    if args.amp == "bf16":
        return torch.autocast(device_type=args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


def bench_train(arch, size, args):
    torch.manual_seed(0)
    model = get_model(arch, args.model_src)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device=args.device, memory_format=mf).train()
    opt = make_opt(args.opt, model.parameters())
    x = torch.randn(args.bs, 3, size, size).contiguous(memory_format=mf).to(args.device)
    y = torch.randint(0, 10, (args.bs,)).to(args.device)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(args):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sync(args)

    t0 = time.perf_counter()
    times = timed_loop(step, args.warmup, args.steps, args.budget, args.min_steps)
    wall = time.perf_counter() - t0
    r = {"case": f"train_{arch}_{size}", "kind": "train", "arch": arch, "size": size,
         "bs": args.bs, "opt": args.opt, "params": n_params(model),
         "device": args.device, "amp": args.amp,
         "channels_last": args.channels_last, "warmup": args.warmup}
    r.update(summarize(times, args.bs))
    r["images_per_s"] = r.pop("items_per_s")
    r["case_wall_s"] = round(wall, 2)
    return r


def conv_split(arch, size, args):
    """`--op-split`: the convolutions of `args.steps` training steps under torch.profiler,
    one JSON line per (convolution shape, pass) with its per-step ms, named as wick's
    profiler names them (`ConvGeometry::case_name`: `c{KH}x{KW}[s{S}][d{D}][g{G}][p{P}]_{C}
    [_{O}]_{H}[x{W}]`) so `cargo xtask bench models --profile` can put them beside wick's.
    Forward is `aten::convolution` (inclusive); backward is `aten::convolution_backward`
    (inclusive: input and weight gradients together). CPU, f32, contiguous layout only."""
    from torch.profiler import ProfilerActivity, profile

    if (args.device, args.amp, args.channels_last) != ("cpu", "none", False):
        raise SystemExit("--op-split profiles the CPU f32 step: no --device/--amp/--channels-last")
    torch.manual_seed(0)
    model = get_model(arch, args.model_src).train()
    opt = make_opt(args.opt, model.parameters())
    x = torch.randn(args.bs, 3, size, size)
    y = torch.randint(0, 10, (args.bs,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    # Each convolution's name, keyed by its input and weight shapes, from the modules
    # themselves during one step (the profiler records shapes, not strides or padding).
    names = {}

    def record(module, inputs):
        inp, weight = tuple(inputs[0].shape), tuple(module.weight.shape)
        (kh, kw), groups = module.kernel_size, module.groups
        name = f"c{kh}x{kw}"
        for tag, value in (("s", module.stride[0]), ("d", module.dilation[0]), ("g", groups)):
            name += f"{tag}{value}" if value != 1 else ""
        padding = module.padding[0]
        name += f"p{padding}" if padding != kh // 2 else ""
        c, o = weight[1] * groups, weight[0]
        name += f"_{c}" + (f"_{o}" if o != c else "") + f"_{inp[2]}"
        name += f"x{inp[3]}" if inp[3] != inp[2] else ""
        if names.setdefault((inp, weight), name) != name:
            raise SystemExit(f"--op-split: {names[(inp, weight)]} and {name} share their shapes")

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    step()
    for hook in hooks:
        hook.remove()
    for _ in range(max(args.warmup - 1, 0)):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    rows = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key == "aten::convolution":
            inp, weight, passname = e.input_shapes[0], e.input_shapes[1], "forward"
        elif e.key == "aten::convolution_backward":
            inp, weight, passname = e.input_shapes[1], e.input_shapes[2], "backward"
        else:
            continue
        name = names[(tuple(inp), tuple(weight))]
        ms, calls = rows.get((name, passname), (0.0, 0))
        rows[(name, passname)] = (ms + e.cpu_time_total / 1000.0, calls + e.count)
    for (name, passname), (ms, calls) in sorted(rows.items()):
        emit({"bench": "models-conv", "impl": "pytorch", "case": f"train{arch[7:]}_{size}",
              "batch": args.bs, "conv": name, "pass": passname,
              "ms": round(ms / args.steps, 3), "calls": calls / args.steps})
    return {"case": f"train{arch[7:]}_{size}", "kind": "op_split", "bs": args.bs,
            "steps": args.steps, "convolutions": len(rows)}


def bench_infer(arch, size, args):
    torch.manual_seed(0)
    model = get_model(arch, args.model_src)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device=args.device, memory_format=mf).eval()
    x = torch.randn(args.bs, 3, size, size).contiguous(memory_format=mf).to(args.device)

    def step():
        with torch.no_grad(), autocast(args):
            model(x)
        sync(args)

    t0 = time.perf_counter()
    times = timed_loop(step, args.warmup, args.steps, args.budget, args.min_steps)
    wall = time.perf_counter() - t0
    r = {"case": f"infer_{arch}_{size}", "kind": "infer", "arch": arch, "size": size,
         "bs": args.bs, "params": n_params(model), "device": args.device, "amp": args.amp, "channels_last": args.channels_last,
         "warmup": args.warmup}
    r.update(summarize(times, args.bs))
    r["images_per_s"] = r.pop("items_per_s")
    r["case_wall_s"] = round(wall, 2)
    return r


# ---------------------------------------------------------------------------
# JPEG cases
# ---------------------------------------------------------------------------

import tempfile
JPEG_DIR = os.environ.get("ANCHOR_JPEG_DIR", os.path.join(tempfile.gettempdir(), "anchor-jpegs"))
N_JPEGS = 200


def ensure_jpegs():
    """200 deterministic photo-like 500x375 JPEGs (smooth colour fields,
    blurred blobs, fine noise, some texture), quality 90."""
    import numpy as np
    from PIL import Image, ImageFilter

    os.makedirs(JPEG_DIR, exist_ok=True)
    paths = [os.path.join(JPEG_DIR, f"img_{i:03d}.jpg") for i in range(N_JPEGS)]
    if all(os.path.exists(p) for p in paths):
        return paths, False
    W, H = 500, 375
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for i, p in enumerate(paths):
        rng = np.random.default_rng(1000 + i)
        img = np.zeros((H, W, 3), np.float32)
        for c in range(3):
            a, b, d = rng.uniform(-1, 1, 3)
            img[..., c] = 128 + 60 * (a * xx / W + b * yy / H) + 30 * np.sin(
                xx / rng.uniform(20, 120) + d * 3) * np.cos(yy / rng.uniform(20, 120))
        for _ in range(rng.integers(4, 10)):  # soft blobs ("objects")
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            r = rng.uniform(20, 120)
            col = rng.uniform(-90, 90, 3)
            m = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
            img += m[..., None] * col
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        arr = np.asarray(im).astype(np.float32)
        arr += rng.normal(0, 6, arr.shape)  # sensor-like noise / texture
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p, quality=90)
    return paths, True


def resize_short(im, s):
    from PIL import Image

    w, h = im.size
    if w <= h:
        nw, nh = s, round(h * s / w)
    else:
        nw, nh = round(w * s / h), s
    return im.resize((nw, nh), Image.BILINEAR)


def center_crop(im, s):
    w, h = im.size
    l, t = (w - s) // 2, (h - s) // 2
    return im.crop((l, t, l + s, t + s))


_TV_AUG = {}


def tv_aug(size):
    """The CPU augmentation a torchvision user would write for this recipe:
    random-resized square crop (75-100% area), flip, rotate 10 deg, brightness and
    contrast 0.2, to a normalized float tensor."""
    if size not in _TV_AUG:
        import torchvision.transforms as T

        _TV_AUG[size] = T.Compose([
            T.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(1.0, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomRotation(10),
            T.ColorJitter(brightness=0.2, contrast=0.2),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])
    return _TV_AUG[size]


def bench_jpeg(mode, args):
    from PIL import Image

    if args.jpeg_dir:
        paths = sorted(
            os.path.join(d, f) for d, _, fs in os.walk(args.jpeg_dir) for f in fs
            if f.lower().endswith((".jpg", ".jpeg")))[: args.jpeg_count]
        made = False
        if not paths:
            sys.exit(f"no JPEGs under {args.jpeg_dir}")
    else:
        paths, made = ensure_jpegs()
    n = len(paths) if not args.quick else min(len(paths), 100)
    paths = paths[:n]

    def one_pass():
        for p in paths:
            with Image.open(p) as im:
                im = im.convert("RGB")  # forces decode
                if mode == "decode":
                    out = im
                elif mode == "r160":
                    out = resize_short(im, 160)
                elif mode in ("tvaug128", "tvaug224"):
                    out = tv_aug(int(mode[5:]))(im)
                    continue
                else:  # r460c
                    out = center_crop(resize_short(im, 460), 460)
                out.load()

    passes = args.jpeg_passes
    t0 = time.perf_counter()
    times = timed_loop(one_pass, 1, passes, args.budget, 1)
    wall = time.perf_counter() - t0
    desc = {"decode": "decode only", "r160": "decode + resize short side 160 (bilinear)",
            "r460c": "decode + resize short side 460 (bilinear) + center crop 460x460",
            "tvaug128": "decode + torchvision train augmentation to 128 + ToTensor + Normalize",
            "tvaug224": "decode + torchvision train augmentation to 224 + ToTensor + Normalize"}[mode]
    r = {"case": f"jpeg_{mode}", "kind": "jpeg", "desc": desc, "n_images": n,
         "src": args.jpeg_dir or "500x375 q90 synthetic", "generated_now": made}
    r.update(summarize(times, n))
    r["images_per_s"] = r.pop("items_per_s")
    r["case_wall_s"] = round(wall, 2)
    return r


# ---------------------------------------------------------------------------
# env / verification
# ---------------------------------------------------------------------------


def conv_backend():
    """Which kernel path a batch-32 conv takes (profiler op names)."""
    from torch.profiler import ProfilerActivity, profile

    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = torch.randn(32, 64, 28, 28, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        conv(x).sum().backward()
    names = sorted({e.key for e in prof.key_averages() if "conv" in e.key.lower()})
    return names


def matmul_gflops(n=1536, reps=6):
    """Machine-speed calibration (this VM's speed varies over time)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return round(2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9, 1)


def env_info(args):
    import PIL

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cfg = torch.__config__.show()
    onednn = next((l.strip(" -") for l in cfg.splitlines() if "MKL-DNN" in l or "oneDNN" in l), None)
    return {
        "case": "env", "python": platform.python_version(), "torch": torch.__version__,
        "pil": PIL.__version__, "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled, "onednn": onednn,
        "mkl": torch.backends.mkl.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "conv_ops_seen": conv_backend(), "cpu": cpu, "nproc": os.cpu_count(),
        "model_src": args.model_src, "opt": args.opt,
        "calib_matmul_gflops": matmul_gflops(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if args.device == "cuda" else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def verify_fastai():
    import warnings

    warnings.filterwarnings("ignore")
    from fastai.vision.models.xresnet import xresnet18, xresnet50

    out = {"case": "verify_fastai"}
    for name, own_f, fa_f in (("xresnet50", own_xresnet50, xresnet50),
                              ("xresnet18", own_xresnet18, xresnet18)):
        own, fa = own_f(10), fa_f(n_out=10)
        so, sf = list(own.state_dict().values()), list(fa.state_dict().values())
        shapes_ok = len(so) == len(sf) and all(a.shape == b.shape for a, b in zip(so, sf))
        res = {"params_own": n_params(own), "params_fastai": n_params(fa),
               "state_tensors": [len(so), len(sf)], "shapes_match_in_order": shapes_ok}
        if shapes_ok:
            # same weights (BN gammas randomized too, so zero-init gammas
            # don't hide a wrong residual path)
            torch.manual_seed(1)
            with torch.no_grad():
                for t in fa.state_dict().values():
                    if t.dtype.is_floating_point:
                        t.copy_(torch.rand_like(t) * 0.2 + 0.9 if t.dim() == 1 else torch.randn_like(t) * 0.05)
            own.load_state_dict(dict(zip(own.state_dict().keys(), fa.state_dict().values())))
            x = torch.randn(2, 3, 97, 97)  # odd size exercises ceil_mode pooling
            for mode in ("eval", "train"):
                getattr(own, mode)(); getattr(fa, mode)()
                with torch.no_grad():
                    d = (own(x) - fa(x)).abs().max().item()
                res[f"max_abs_diff_{mode}"] = d
        out[name] = res
    return out


# ---------------------------------------------------------------------------

ALL_CASES = ["train50_64", "train50_128", "train50_224", "train18_128", "infer50_224",
             "jpeg_decode", "jpeg_r160", "jpeg_r460c", "jpeg_tvaug128", "jpeg_tvaug224"]
# --quick leaves out train50_224 (~10 s/step here, ~30 s/step when the VM is
# contended) unless it is named with --cases.
QUICK_CASES = [c for c in ALL_CASES if c != "train50_224"]


TUNED_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736"


def run_child(case):
    """Run one case in a fresh interpreter, passing the timing options on."""
    import subprocess

    argv = [sys.executable, os.path.abspath(__file__), "--cases", case, "--no-env",
            "--no-isolate", "--child"]
    skip = {"--cases", "--isolate", "--no-isolate", "--verify-fastai", "--no-env", "--tuned-malloc"}
    it = iter(sys.argv[1:])
    for a in it:
        key = a.split("=", 1)[0]
        if key in skip:
            if key == "--cases" and "=" not in a:
                next(it, None)
            continue
        argv.append(a)
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    r = lines[-1]
    r["isolated"] = True
    return r


def model_case(c):
    """`train50_128` -> ("xresnet50", 128); only the depths both sides build."""
    depth, _, size = c[5:].partition("_")
    if depth not in ("18", "50") or not size.isdigit():
        raise SystemExit(f"unknown case {c!r}: expected train|infer + 18|50 + _<size>")
    return f"xresnet{depth}", int(size)


def run_case(c, args):
    if c.startswith("train") and args.op_split:
        return conv_split(*model_case(c), args)
    if c.startswith("train"):
        return bench_train(*model_case(c), args)
    if c.startswith("infer"):
        return bench_infer(*model_case(c), args)
    if c.startswith("jpeg_"):
        return bench_jpeg(c[5:], args)
    raise SystemExit(f"unknown case {c!r}; known: {','.join(ALL_CASES)}")


def main():
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="all",
                    help=f"comma list or 'all' or 'none' (known: {','.join(ALL_CASES)})")
    ap.add_argument("--quick", action="store_true",
                    help="all cases but train50_224 (unless named), 1 warm-up + 2 timed steps, "
                         "6 s/case budget, 100 JPEGs x 2 passes: ~35 s in all")
    ap.add_argument("--steps", type=int, default=None, help="max timed steps per model case (default 5)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 1)")
    ap.add_argument("--min-steps", type=int, default=None, help="min timed steps (default 3)")
    ap.add_argument("--budget", type=float, default=None,
                    help="stop timing a case after this many seconds once min-steps done (default 30)")
    ap.add_argument("--jpeg-passes", type=int, default=None, help="timed passes over the JPEGs (default 3)")
    ap.add_argument("--jpeg-dir", default=None,
                    help="time the JPEG cases on the JPEGs under this folder instead of synthetic ones")
    ap.add_argument("--jpeg-count", type=int, default=200, help="how many JPEGs of --jpeg-dir to use")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--opt", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--model-src", choices=["own", "fastai"], default="own")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--verify-fastai", action="store_true",
                    help="check own xresnet == fastai xresnet (needs fastai; ~10 s import)")
    ap.add_argument("--no-env", action="store_true", help="skip the env line")
    ap.add_argument("--op-split", action="store_true",
                    help="train cases: instead of timing, profile --steps steps and print each "
                         "convolution shape's per-step ms (forward, backward)")
    ap.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                    help="run each case in a fresh python process (default unless --quick): "
                         "glibc's malloc state left by earlier cases changes later cases' "
                         "page-fault cost, so in-process numbers depend on case order")
    ap.add_argument("--no-isolate", dest="isolate", action="store_false")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where the model cases run (the JPEG cases always run on the CPU)")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none",
                    help="bf16 autocast of forward + loss (fastai's to_bf16)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark = True (PyTorch's default is False)")
    ap.add_argument("--tuned-malloc", action="store_true",
                    help="re-exec with GLIBC_TUNABLES that stop glibc from mmap/munmap-ing "
                         "every large activation buffer (page-fault churn); what an allocator "
                         "LD_PRELOAD (jemalloc/tcmalloc) would give a tuned user")
    args = ap.parse_args()
    if args.tuned_malloc and "GLIBC_TUNABLES" not in os.environ:
        env = dict(os.environ, GLIBC_TUNABLES=TUNED_MALLOC)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    q = args.quick
    args.steps = args.steps if args.steps is not None else (2 if q else 5)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.min_steps = args.min_steps if args.min_steps is not None else (2 if q else 3)
    args.min_steps = min(args.min_steps, args.steps)
    args.budget = args.budget if args.budget is not None else (6.0 if q else 30.0)
    args.jpeg_passes = args.jpeg_passes if args.jpeg_passes is not None else (2 if q else 3)

    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if not args.no_env:
        emit(env_info(args))
    if args.verify_fastai:
        emit(verify_fastai())
    if args.cases == "none":
        cases = []
    elif args.cases == "all":
        cases = QUICK_CASES if q else ALL_CASES
    else:
        cases = args.cases.split(",")
    isolate = (not q) if args.isolate is None else args.isolate
    for c in cases:
        if isolate and not args.child:
            emit(run_child(c.strip()))
        else:
            emit(run_case(c.strip(), args))
    if args.child:
        return
    emit({"case": "total", "wall_s": round(time.perf_counter() - t_start, 2),
          "quick": q, "isolated": isolate, "steps": args.steps, "warmup": args.warmup,
          "calib_matmul_gflops_end": matmul_gflops()})


if __name__ == "__main__":
    main()
