"""CPU forward time of an ``hdsr-export`` ONNX graph (onnxruntime) against PyTorch eager.

    python experiments/benchmarks/bench_export.py [--repeats 5] [--sizes 128,256] [--fp16]

The full HDSRNet x2 (random weights: speed does not depend on the values) is exported as
``hdsr-export`` exports it (one-image graph, dynamic height and width, opset 17) and run
by onnxruntime's CPUExecutionProvider; PyTorch runs the network as training builds it
(channels_last, ``inference_mode``). Both use the threads they pick by default (printed).
For each square LR size, one untimed pass of each, then ``--repeats`` rounds that time one
onnxruntime and one PyTorch pass each, interleaved, so that a machine busy with other
work slows both alike; the medians are printed in ms per forward pass, with the max abs
difference of the two outputs. ``--fp16`` adds the float16 graph as a third column.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per size (default 5)")
    p.add_argument("--sizes", default="128,256", help="square LR sides (default 128,256)")
    p.add_argument("--fp16", action="store_true", help="also time the float16 graph")
    args = p.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from hdsr.export import export_module, write_onnx
    from hdsr.models import HDSRNet

    torch.manual_seed(0)
    net = HDSRNet(scale=2).eval()
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ["fp32"] + (["fp16"] if args.fp16 else []):
            path = Path(tmp) / f"hdsrnet_x2_{label}.onnx"
            write_onnx(export_module(net, fp16=label == "fp16"), path, opset=17)
            sessions[f"onnxruntime {label}"] = ort.InferenceSession(
                str(path), providers=["CPUExecutionProvider"]
            )

    def run_torch(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(lr)).numpy()

    runners = {name: (lambda lr, s=s: s.run(["sr"], {"lr": lr})[0]) for name, s in sessions.items()}
    runners["pytorch fp32"] = run_torch
    print(
        f"HDSRNet x2, {sum(p.numel() for p in net.parameters()):,} parameters; torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
        f"{ort.__version__} (default threads); median of {args.repeats}, interleaved"
    )
    header = ["LR size"] + [f"{name} ms" for name in runners] + ["max|ort - torch|"]
    print("  ".join(f"{h:>18}" for h in header))
    rng = np.random.default_rng(0)
    for side in (int(s) for s in args.sizes.split(",")):
        lr = rng.uniform(0, 255, (1, 3, side, side)).astype(np.float32)
        outs = {name: run(lr) for name, run in runners.items()}  # warm-up, untimed
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(lr)
                times[name].append((time.perf_counter() - t0) * 1000)
        diff = np.abs(outs["onnxruntime fp32"] - outs["pytorch fp32"]).max()
        cells = [f"{side}x{side}"] + [f"{statistics.median(times[n]):.1f}" for n in runners]
        print("  ".join(f"{c:>18}" for c in cells + [f"{diff:.2g}"]))


if __name__ == "__main__":
    main()
