"""Speed of hdsr's HDSRNet against a plain formulation of the authors' released code.

The reference (``tests/official_reference.py``) follows the released model: NCHW, the
final 64->3 conv on the HR grid, the view-based grouped dynamic conv, plain Adam. Both
run the same weights. Timings are medians of interleaved repeats (reference, ours,
reference, ...), batch 1 for the forward pass. Also measured: the machine's fp32 GEMM
and 3x3-conv ceilings, and the FLOP rate that ours reaches.

    python experiments/benchmarks/bench_speed.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from hdsr.models import load_official  # noqa: E402
from hdsr.profile import count_macs  # noqa: E402
from official_reference import RefHDSRNet  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: list, repeats: int, warmup: int, device: str) -> list[float]:
    """Median seconds of each of ``fns``, run in turn ``repeats`` times after warm-up."""
    for _ in range(warmup):
        for f in fns:
            f()
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            sync(device)
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def ceilings(device: str) -> dict[str, float]:
    """fp32 GFLOP/s of a 2048^3 GEMM and of a 3x3 64->64 conv at 128x128 (NCHW, NHWC)."""
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    x = torch.randn(1, 64, 128, 128, device=device)
    w = torch.randn(64, 64, 3, 3, device=device)
    x_cl, w_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    gemm, conv, conv_cl = interleaved(
        [lambda: a @ b, lambda: F.conv2d(x, w, padding=1), lambda: F.conv2d(x_cl, w_cl, padding=1)],
        repeats=15,
        warmup=3,
        device=device,
    )
    conv_flops = 2 * 128 * 128 * 64 * 64 * 9
    return {
        "gemm": 2 * 2048**3 / gemm / 1e9,
        "conv3x3_nchw": conv_flops / conv / 1e9,
        "conv3x3_channels_last": conv_flops / conv_cl / 1e9,
    }


def forward_case(scale: int, size: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    ref = RefHDSRNet(scale).eval().to(device)
    ours = load_official(ref.state_dict(), scale).to(device)
    x = torch.rand(1, 3, size, size, device=device) * 255
    with torch.inference_mode():
        t_ref, t_ours = interleaved([lambda: ref(x), lambda: ours(x)], repeats, 2, device)
        y_ref, y_ours = ref(x), ours(x)
    macs = count_macs(ours.cpu(), (size, size))["total"]
    return {
        "scale": scale,
        "lr": size,
        "ref_ms": t_ref * 1e3,
        "ours_ms": t_ours * 1e3,
        "speedup": t_ref / t_ours,
        "rel_err": float((y_ours - y_ref).abs().max() / y_ref.abs().max()),
        "ours_gflops": 2 * macs / t_ours / 1e9,
    }


def train_case(scale: int, batch: int, size: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    ref = RefHDSRNet(scale).to(device)
    ours = load_official(ref.state_dict(), scale).train().to(device)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-4)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-4, fused=True)
    lr = torch.rand(batch, 3, size, size, device=device) * 255
    hr = torch.rand(batch, 3, size * scale, size * scale, device=device) * 255

    def step(net, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            F.l1_loss(net(lr), hr).backward()
            opt.step()

        return run

    t_ref, t_ours = interleaved([step(ref, opt_ref), step(ours, opt_ours)], repeats, 1, device)
    # gradient agreement with a float64 reference on fresh copies of the same weights
    torch.manual_seed(1)
    ref64 = RefHDSRNet(scale).double()
    fast = load_official(ref64.state_dict(), scale).train()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64) * 255
    y = torch.rand(2, 3, 12 * scale, 12 * scale, dtype=torch.float64) * 255
    F.l1_loss(ref64(x), y).backward()
    F.l1_loss(fast(x.float()), y.float()).backward()
    from hdsr.models.official import hdsr_to_official_key

    ref_grads = dict(ref64.named_parameters())
    worst = 0.0
    for name, p in fast.named_parameters():
        g_ref = ref_grads[hdsr_to_official_key(name)].grad.reshape(p.shape)
        worst = max(worst, float((p.grad.double() - g_ref).norm() / g_ref.norm()))
    return {
        "scale": scale,
        "batch": batch,
        "lr": size,
        "ref_ms": t_ref * 1e3,
        "ours_ms": t_ours * 1e3,
        "speedup": t_ref / t_ours,
        "grad_rel_l2_vs_fp64": worst,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dev = args.device
    reps = 3 if args.quick else 7
    print(
        f"machine: {platform.machine()} {platform.processor()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, device {dev}"
    )
    ceil = ceilings(dev)
    print("ceilings (GFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in ceil.items()))
    conv_ceiling = max(ceil["conv3x3_nchw"], ceil["conv3x3_channels_last"])

    sizes = [64, 128] if args.quick else [64, 128, 256]
    fwd = [forward_case(s, n, reps, dev) for s in (2, 3, 4) for n in sizes]
    print("\nforward, batch 1 (ms)")
    print(
        f"{'scale':>5} {'LR':>4} {'authors':>9} {'hdsr':>9} {'speedup':>8} "
        f"{'max|d|/max|ref|':>16} {'GFLOP/s':>8} {'% conv ceiling':>15}"
    )
    for r in fwd:
        print(
            f"{r['scale']:>5} {r['lr']:>4} {r['ref_ms']:>9.1f} {r['ours_ms']:>9.1f} "
            f"{r['speedup']:>7.2f}x {r['rel_err']:>16.1e} {r['ours_gflops']:>8.1f} "
            f"{100 * r['ours_gflops'] / conv_ceiling:>14.0f}%"
        )
    train = [train_case(2, 16, 48, reps, dev), train_case(4, 16, 32, reps, dev)]
    print("\ntraining step: forward + L1 + backward + Adam (ms)")
    print(
        f"{'scale':>5} {'batch':>5} {'LR':>4} {'authors':>9} {'hdsr':>9} {'speedup':>8} "
        f"{'grad rel-L2 vs fp64':>20}"
    )
    for r in train:
        print(
            f"{r['scale']:>5} {r['batch']:>5} {r['lr']:>4} {r['ref_ms']:>9.1f} "
            f"{r['ours_ms']:>9.1f} {r['speedup']:>7.2f}x {r['grad_rel_l2_vs_fp64']:>20.1e}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"ceilings": ceil, "forward": fwd, "train": train}, indent=1)
        )


if __name__ == "__main__":
    main()
