"""The convolutions' arithmetic of an xresnet18 training step, counted three ways: every tap
(im2col + gemm), valid taps only (padding skipped, as wick's conv_regions does), and with
Winograd F(2x2, 3x3) (2.25x fewer multiplies) on the 3x3 stride-1 convolutions whose output is
8x8 or larger (wick's conv_winograd rule). The lower bound docs/performance.md puts on an
epoch's time ("Why >= 3x fastai end to end is out of reach") comes from these numbers.

    python3 scripts/conv_arithmetic.py --size 48 --batch 64 --valid-images 1339

fastai's xresnet18: stem 3->32 (stride 2), 32->32, 32->64 (3x3), max pool 3x3 stride 2, four
stages of two BasicBlocks (64, 128, 256, 512 channels, the first block of stages 2-4 with
stride 2 and an avg-pool + 1x1 convolution shortcut), head. Standard library only.
"""

import argparse


def axis(n_in, k, stride, pad):
    """(output length, number of (output, tap) pairs inside the input) along one axis."""
    n_out = (n_in + 2 * pad - k) // stride + 1
    valid = sum(1 for o in range(n_out) for t in range(k) if 0 <= o * stride - pad + t < n_in)
    return n_out, valid


def xresnet18_convs(size):
    """(input channels, output channels, kernel, stride, input size) of every convolution."""
    convs = []

    def conv(c_in, c_out, k, stride, n):
        convs.append((c_in, c_out, k, stride, n))
        return axis(n, k, stride, k // 2)[0]

    n = conv(3, 32, 3, 2, size)
    n = conv(32, 32, 3, 1, n)
    n = conv(32, 64, 3, 1, n)
    n = axis(n, 3, 2, 1)[0]
    c_in = 64
    for stage, c_out in enumerate([64, 128, 256, 512]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            n_out = conv(c_in, c_out, 3, stride, n)
            conv(c_out, c_out, 3, 1, n_out)
            if c_in != c_out:
                conv(c_in, c_out, 1, 1, n_out)
            c_in, n = c_out, n_out
    return convs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--valid-images", type=int, default=1339)
    args = parser.parse_args()
    every = valid = winograd = 0.0
    first = None
    for c_in, c_out, k, stride, n in xresnet18_convs(args.size):
        n_out, taps = axis(n, k, stride, k // 2)
        macs_every = args.batch * c_out * c_in * n_out * n_out * k * k
        macs_valid = args.batch * c_out * c_in * taps * taps
        fast = k == 3 and stride == 1 and n_out >= 8
        every += macs_every
        valid += macs_valid
        winograd += macs_valid / 2.25 if fast else macs_valid
        if first is None:  # the stem's first convolution: stride 2, no Winograd
            first = (macs_every, macs_valid, macs_valid)
    # A training step: forward, input gradient (not for the first convolution), weight gradient.
    step = lambda forward, first_conv: 2 * (3 * forward - first_conv) / 1e9
    print(f"forward GMAC a batch: every tap {every / 1e9:.2f}, valid taps {valid / 1e9:.2f}, "
          f"with Winograd {winograd / 1e9:.2f}")
    print(f"training step GFLOP: every tap {step(every, first[0]):.1f}, "
          f"valid taps {step(valid, first[1]):.1f}, with Winograd {step(winograd, first[2]):.1f}")
    print(f"validation of {args.valid_images} images, GFLOP with Winograd: "
          f"{2 * winograd / args.batch * args.valid_images / 1e9:.1f}")


if __name__ == "__main__":
    main()
