"""PyTorch side of the wick-nn benchmark: the same cases as benches/nn.rs (xresnet50 convs at
224 and 128 px, batch 32, f32, and the stem max pool), timed the same way (median after a
warm-up), printed in the same JSON schema with "impl": "torch".

    /work/venv-anchor/bin/python crates/wick-nn/benches/torch_nn.py [--quick] [--cases a,b]
        [--batch 32] [--threads 2] [--reps 5] [--cpu-time]

FLOPs are 2*MAC; forward+backward counts 3x the forward FLOPs. Forward runs under
no_grad; forward+backward makes x and w require grad and calls y.backward(ones). Pool
bytes: forward reads the input and writes the output; backward reads the input and the
output gradient and writes the input gradient. Batch-norm cases (train-mode BatchNorm2d
then ReLU) count 2 tensors forward and 6 forward+backward.
"""

import argparse
import json
import re
import statistics
import time

import torch
import torch.nn.functional as F

QUICK = ["c3x3_64_56", "c1x1_256_64_56", "c1x1_64_256_56", "c3x3_256_14", "maxpool3s2_64_112", "bnrelu_256_32"]


def conv_case(cin, cout, kernel, stride, size):
    stride_tag = "s2" if stride == 2 else ""
    channels = f"{cin}" if cin == cout else f"{cin}_{cout}"
    name = f"c{kernel}x{kernel}{stride_tag}_{channels}_{size}"
    return {"name": name, "kind": "conv", "cin": cin, "cout": cout, "kernel": kernel, "stride": stride, "size": size}


def pool_case(channels, size):
    return {"name": f"maxpool3s2_{channels}_{size}", "kind": "pool", "channels": channels, "size": size}


def bn_case(channels, size):
    return {"name": f"bnrelu_{channels}_{size}", "kind": "bn", "channels": channels, "size": size}


def batch_norm_cases():
    """Same as `batch_norm_cases` in benches/nn.rs."""
    return [bn_case(64, 56), bn_case(256, 56), bn_case(256, 32)]


def xresnet_cases(image):
    """Same list and order as `xresnet_cases` in benches/nn.rs."""
    stem = image // 2
    cases = [conv_case(3, 32, 3, 2, image), conv_case(32, 32, 3, 1, stem), conv_case(32, 64, 3, 1, stem), pool_case(64, stem)]
    size = -(-image // 4)  # each stride-2 convolution halves the size, rounding up (div_ceil)
    for stage, width in enumerate([64, 128, 256, 512]):
        if stage > 0:
            cases.append(conv_case(width, width, 3, 2, size))
            size = -(-size // 2)
        cases.append(conv_case(width, width, 3, 1, size))
        cases.append(conv_case(width * 4, width, 1, 1, size))
        cases.append(conv_case(width, width * 4, 1, 1, size))
    return cases


def parse_case_name(name):
    """The case a name describes, `c{K}x{K}[s2]_{C}[_{O}]_{H}`, `bnrelu_{C}_{H}` or
    `maxpool3s2_{C}_{H}` (as benches/nn.rs)."""
    unknown = (f"unknown case {name} (not in the lists, and not c{{K}}x{{K}}[s2]_{{C}}[_{{O}}]_{{H}}, "
               "bnrelu_{C}_{H} or maxpool3s2_{C}_{H})")
    for prefix, make in (("bnrelu", bn_case), ("maxpool3s2", pool_case)):
        other = re.fullmatch(prefix + r"_(\d+)_(\d+)", name)
        if other:
            channels, size = int(other.group(1)), int(other.group(2))
            case = make(channels, size)
            if 0 in (channels, size) or case["name"] != name:
                raise SystemExit(unknown)
            return case
    match = re.fullmatch(r"c(\d+)x\1(s2)?_(\d+)(?:_(\d+))?_(\d+)", name)
    if not match:
        raise SystemExit(unknown)
    kernel, s2, cin, cout, size = (int(g) if g and g != "s2" else g for g in match.groups())
    case = conv_case(cin, cout or cin, kernel, 2 if s2 else 1, size) if 0 not in (kernel, cin, cout, size) else None
    if case is None or case["name"] != name:
        raise SystemExit(unknown)
    return case


CLOCK = {"cpu_time": False, "threads": 2}


def time_ms(fn, reps):
    """Median of `reps` runs after a warm-up: wall time, or with --cpu-time the process CPU
    time divided by the thread count (as `--cpu-time` in benches/nn.rs)."""
    fn()  # warm-up
    samples = []
    for _ in range(reps):
        if CLOCK["cpu_time"]:
            start = time.process_time()
            fn()
            samples.append((time.process_time() - start) * 1e3 / CLOCK["threads"])
        else:
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def run_conv(case, batch, reps):
    k, s = case["kernel"], case["stride"]
    pad = k // 2
    x = torch.rand(batch, case["cin"], case["size"], case["size"]) * 2 - 1
    w = (torch.rand(case["cout"], case["cin"], k, k) * 2 - 1) * 0.05
    out = (case["size"] + 2 * pad - k) // s + 1
    flops = 2.0 * batch * case["cout"] * out * out * case["cin"] * k * k

    def forward():
        with torch.no_grad():
            F.conv2d(x, w, stride=s, padding=pad)

    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)

    def forward_backward():
        y = F.conv2d(xg, wg, stride=s, padding=pad)
        y.backward(torch.ones_like(y))
        xg.grad = None
        wg.grad = None

    fwd_ms = time_ms(forward, reps)
    fwdbwd_ms = time_ms(forward_backward, reps)
    return {
        "fwd_ms": round(fwd_ms, 3),
        "fwd_gflops": round(flops / fwd_ms / 1e6, 2),
        "fwdbwd_ms": round(fwdbwd_ms, 3),
        "fwdbwd_gflops": round(3 * flops / fwdbwd_ms / 1e6, 2),
    }


def run_pool(case, batch, reps):
    size, channels = case["size"], case["channels"]
    x = torch.relu(torch.rand(batch, channels, size, size) * 2 - 1)
    out = (size + 2 - 3) // 2 + 1
    in_bytes = 4.0 * batch * channels * size * size
    out_bytes = 4.0 * batch * channels * out * out
    fwd_bytes = in_bytes + out_bytes
    fwdbwd_bytes = fwd_bytes + 2 * in_bytes + out_bytes

    def forward():
        with torch.no_grad():
            F.max_pool2d(x, 3, 2, 1)

    xg = x.clone().requires_grad_(True)

    def forward_backward():
        y = F.max_pool2d(xg, 3, 2, 1)
        y.backward(torch.ones_like(y))
        xg.grad = None

    fwd_ms = time_ms(forward, reps)
    fwdbwd_ms = time_ms(forward_backward, reps)
    return {
        "fwd_ms": round(fwd_ms, 3),
        "fwd_gbps": round(fwd_bytes / fwd_ms / 1e6, 2),
        "fwdbwd_ms": round(fwdbwd_ms, 3),
        "fwdbwd_gbps": round(fwdbwd_bytes / fwdbwd_ms / 1e6, 2),
    }


def run_batch_norm(case, batch, reps):
    channels, size = case["channels"], case["size"]
    x = (torch.rand(batch, channels, size, size) * 2 - 1) * 2
    bn = torch.nn.BatchNorm2d(channels)
    bn.train()

    def forward():
        with torch.no_grad():
            F.relu(bn(x))

    xg = x.clone().requires_grad_(True)

    def forward_backward():
        y = F.relu(bn(xg))
        y.backward(torch.ones_like(y))
        xg.grad = None
        bn.zero_grad(set_to_none=True)

    tensor_bytes = 4.0 * x.numel()
    fwd_ms = time_ms(forward, reps)
    fwdbwd_ms = time_ms(forward_backward, reps)
    return {
        "fwd_ms": round(fwd_ms, 3),
        "fwd_gbps": round(2 * tensor_bytes / fwd_ms / 1e6, 2),
        "fwdbwd_ms": round(fwdbwd_ms, 3),
        "fwdbwd_gbps": round(6 * tensor_bytes / fwdbwd_ms / 1e6, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", default=None, help="comma-separated case names")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cpu-time", action="store_true", help="CPU time per thread instead of wall time")
    args = parser.parse_args()
    CLOCK["cpu_time"] = args.cpu_time
    CLOCK["threads"] = args.threads
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = xresnet_cases(224) + xresnet_cases(128) + batch_norm_cases()
    if args.cases:
        wanted = args.cases.split(",")
        known = {c["name"]: c for c in xresnet_cases(64) + xresnet_cases(48) + cases}
        cases = [known[name] if name in known else parse_case_name(name) for name in wanted]
    elif args.quick:
        cases = [c for c in cases if c["name"] in QUICK]
    for case in cases:
        if case["kind"] == "conv":
            result = run_conv(case, args.batch, args.reps)
        elif case["kind"] == "pool":
            result = run_pool(case, args.batch, args.reps)
        else:
            result = run_batch_norm(case, args.batch, args.reps)
        line = {"bench": "nn", "case": case["name"], "kind": case["kind"], "impl": "torch", **result}
        print(json.dumps(line, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
