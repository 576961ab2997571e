"""The ablation table and validation curves of a multirun directory (``hdsr-report``).

Reads each job's resolved config (``.hydra/config.yaml``, as data: it may only name
hdsr's networks) and CSV logs (``csv/version_*/metrics.csv``), so it works without W&B.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from hdsr.evaluation.complexity import count_macs
from hdsr.evaluation.published import TABLE1
from hdsr.models.hdsrnet import count_parameters
from hdsr.models.registry import build_network


def read_metrics(job_dir: Path) -> list[dict[str, float]]:
    """Every logged row of a run, all its CSV versions in order (numbers as floats)."""
    versions = sorted(
        (job_dir / "csv").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[1]),
    )
    rows = []
    for path in versions:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                rows.append({k: float(v) for k, v in r.items() if v not in ("", None)})
    return rows


def val_curves(rows: list[dict[str, float]]) -> dict[str, list[tuple[float, float]]]:
    """{set: [(step, psnr)]} from the val/psnr_y/<set> rows; a later start at the same
    step replaces the earlier value (a resumed run re-validating)."""
    curves: dict[str, dict[float, float]] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("val/psnr_y/"):
                curves.setdefault(k.removeprefix("val/psnr_y/"), {})[r.get("step", 0.0)] = v
    return {s: sorted(c.items()) for s, c in curves.items()}


def final_values(rows: list[dict[str, float]], prefix: str) -> dict[str, float]:
    """The last logged value of each ``<prefix><set>`` metric."""
    out: dict[str, float] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith(prefix):
                out[k.removeprefix(prefix)] = v
    return out


def job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra" / "config.yaml").is_file())
    if not jobs:
        raise FileNotFoundError(
            f"{sweep_dir} holds no runs (expected sub-directories with .hydra/config.yaml "
            "and csv/version_*/metrics.csv, as hdsr-train -m writes)"
        )
    return jobs


def collect(sweep_dir: Path, macs_input: tuple[int, int]) -> list[dict[str, Any]]:
    """One record per job: variant, scale, final PSNR/SSIM per set, params, MACs, curves."""
    from omegaconf import OmegaConf


    records = []
    for job in job_dirs(sweep_dir):
        cfg_file = job / ".hydra" / "config.yaml"
        cfg = OmegaConf.load(cfg_file)
        # a run folder's config is data: it may only name one of hdsr's networks
        net = build_network(OmegaConf.select(cfg, "model.net"), str(cfg_file), "model.net")
        macs = count_macs(net, macs_input)
        rows = read_metrics(job)
        name = str(cfg.model.name)
        m = re.match(r"r(\d)_", name)
        paper = TABLE1.get(int(m.group(1))) if m else None
        records.append(
            {
                "run": job.name,
                "variant": name,
                "scale": int(cfg.data.scale),
                "psnr": final_values(rows, "val/psnr_y/"),
                "ssim": final_values(rows, "val/ssim_y/"),
                "params": count_parameters(net),
                "macs": macs["total"],
                "paper": paper,
                "curves": val_curves(rows),
            }
        )
    return records


def write_table(records: list[dict[str, Any]], out: Path, macs_input: tuple[int, int]) -> None:
    sets = sorted({s for r in records for s in r["psnr"]})
    header = [
        "variant",
        "scale",
        *[f"{s} PSNR/SSIM" for s in sets],
        "params",
        f"GMACs @{macs_input[0]}x{macs_input[1]}",
        "paper U100 x4 PSNR/SSIM",
        "run",
    ]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with open(out / "ablation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "variant",
                "scale",
                "set",
                "psnr_y",
                "ssim_y",
                "params",
                "macs",
                "paper_psnr_y",
                "paper_ssim_y",
                "run",
            ]
        )
        for r in records:
            paper = r["paper"]
            for s in sets:
                w.writerow(
                    [
                        r["variant"],
                        r["scale"],
                        s,
                        r["psnr"].get(s),
                        r["ssim"].get(s),
                        r["params"],
                        r["macs"],
                        paper[1] if paper else None,
                        paper[2] if paper else None,
                        r["run"],
                    ]
                )
            cells = [r["variant"], f"x{r['scale']}"]
            for s in sets:
                p, q = r["psnr"].get(s), r["ssim"].get(s)
                cells.append(f"{p:.2f}/{q:.4f}" if p is not None and q is not None else "-")
            cells += [
                f"{r['params']:,}",
                f"{r['macs'] / 1e9:.2f}",
                f"{paper[1]:.2f}/{paper[2]:.4f}" if paper else "-",
                r["run"],
            ]
            md.append("| " + " | ".join(cells) + " |")
    (out / "ablation.md").write_text(
        "Final validation PSNR/SSIM (Y channel, shave = scale) of each run, with the "
        "paper's Table I figures (x4, Urban100) beside them.\n\n" + "\n".join(md) + "\n"
    )


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({s for r in records for s in r["curves"]})
    fig, axes = plt.subplots(
        1, max(len(sets), 1), figsize=(6 * max(len(sets), 1), 4.2), squeeze=False
    )
    for ax, s in zip(axes[0], sets, strict=False):
        for r in records:
            pts = r["curves"].get(s)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=r["variant"])
        ax.set_title(f"validation PSNR (Y) on {s}")
        ax.set_xlabel("step")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
