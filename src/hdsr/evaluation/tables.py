"""Result tables and files, all in one place: the rows of per_image.csv, the eval summary
beside the paper's rows, results.md/csv, the W&B eval run; and a training run's final
table (model beside bicubic) and per-image table.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hdsr.evaluation.published import PUBLISHED
from hdsr.evaluation.scoring import ImageScores
from hdsr.metrics import mean_over_images
from hdsr.runtime import wandb_mode


def summarize(rows: Sequence[dict[str, Any]], set_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per (model, scale): mean scores per set for the model and bicubic, plus the paper's."""
    out = []
    keys = []
    for r in rows:
        if (r["model"], r["scale"]) not in keys:
            keys.append((r["model"], r["scale"]))
    for model, scale in keys:
        mine = [r for r in rows if r["model"] == model and r["scale"] == scale]
        for method, pk, sk, source in (
            (model, "psnr_y", "ssim_y", "measured"),
            ("bicubic", "bicubic_psnr_y", "bicubic_ssim_y", "measured"),
        ):
            if method == "bicubic" and any(
                o["method"] == "bicubic" and o["scale"] == scale and o["source"] == "measured"
                for o in out
            ):
                continue
            for name in set_names:
                vals = [r for r in mine if r["set"] == name]
                if vals:
                    out.append(
                        {
                            "method": method,
                            "scale": scale,
                            "set": name,
                            "source": source,
                            "psnr_y": mean_over_images([v[pk] for v in vals]),
                            "ssim_y": mean_over_images([v[sk] for v in vals]),
                            "images": len(vals),
                        }
                    )
    for scale in sorted({k[1] for k in keys}):
        for method in ("HDSRNet", "bicubic"):
            for name in set_names:
                pub = PUBLISHED.get((method, scale), {}).get(name)
                if pub:
                    out.append(
                        {
                            "method": method,
                            "scale": scale,
                            "set": name,
                            "source": "paper",
                            "psnr_y": pub[0],
                            "ssim_y": pub[1],
                            "images": None,
                        }
                    )
    return out


def table_rows(summary: Sequence[dict[str, Any]], set_names: Sequence[str]) -> list[list[str]]:
    """Rows of the printed table: method (source), xS, then 'PSNR/SSIM' per set."""
    order: list[tuple[str, int, str]] = []
    for r in summary:
        key = (r["method"], r["scale"], r["source"])
        if key not in order:
            order.append(key)
    rows = []
    for method, scale, source in order:
        cells = [f"{method} ({'paper' if source == 'paper' else 'ours'})", f"x{scale}"]
        for name in set_names:
            r = next(
                (
                    x
                    for x in summary
                    if (x["method"], x["scale"], x["source"], x["set"])
                    == (method, scale, source, name)
                ),
                None,
            )
            cells.append(f"{r['psnr_y']:.2f}/{r['ssim_y']:.4f}" if r else "-")
        rows.append(cells)
    return rows


def write_outputs(run_dir: Path, rows, summary, set_names) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_image": run_dir / "per_image.csv",
        "csv": run_dir / "results.csv",
        "markdown": run_dir / "results.md",
    }
    for path, data in ((paths["per_image"], rows), (paths["csv"], summary)):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    header = ["method", "scale", *[f"{n} PSNR/SSIM" for n in set_names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(summary, set_names)]
    paths["markdown"].write_text(
        "Y channel, `scale` pixels shaved, PSNR/SSIM per image averaged per set; "
        "LR = MATLAB bicubic.\n\n" + "\n".join(lines) + "\n"
    )
    return paths


def log_to_wandb(cfg: DictConfig, run_dir: Path, summary, rows) -> str | None:
    """One W&B run (job_type eval) with the results and per-image tables."""
    wb = cfg.logger.get("wandb") or {}
    if not wb.get("enabled", False):
        return None
    mode = wandb_mode(wb.get("mode"))
    if mode == "disabled":
        return None
    import wandb

    run = wandb.init(
        project=wb.get("project", "hdsr"),
        entity=wb.get("entity"),
        name=str(cfg.run_name),
        group=wb.get("group") or None,
        job_type="eval",
        mode=mode,
        dir=str(run_dir),
        tags=["eval", *list(wb.get("tags") or [])],
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    exit_code = 1
    try:
        for name, data in (("eval/results", summary), ("eval/per_image", rows)):
            cols = list(data[0])
            run.log({name: wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in data])})
        for r in summary:
            if r["source"] == "measured":
                run.summary[f"eval/{r['method']}/x{r['scale']}/psnr_y/{r['set']}"] = r["psnr_y"]
                run.summary[f"eval/{r['method']}/x{r['scale']}/ssim_y/{r['set']}"] = r["ssim_y"]
        exit_code = 0
        return run.dir
    finally:
        wandb.finish(exit_code=exit_code)


def final_table(cfg: Any, result: Mapping[str, Any]) -> None:
    """Print the run's validation PSNR/SSIM beside bicubic, then where its outputs are."""
    from rich.console import Console
    from rich.table import Table

    sets = list(result["bicubic"])
    table = Table(title=f"Validation x{cfg.data.scale} (Y channel, shave {cfg.data.scale}px)")
    table.add_column("method")
    for s in sets:
        table.add_column(f"{s} PSNR (dB)", justify="right")
        table.add_column(f"{s} SSIM", justify="right")
    row = [cfg.model.name]
    for s in sets:
        p = result["metrics"].get(f"val/psnr_y/{s}")
        q = result["metrics"].get(f"val/ssim_y/{s}")
        row += [f"{p:.2f}" if p is not None else "-", f"{q:.4f}" if q is not None else "-"]
    table.add_row(*row)
    bicubic = []
    for s in sets:
        psnr, ssim = result["bicubic"][s]
        bicubic += [f"{psnr:.2f}", f"{ssim:.4f}"]
    table.add_row("bicubic", *bicubic)
    console = Console(soft_wrap=True)
    console.print(table)
    for s, (scored, total) in result.get("images", {}).items():
        if scored < total:
            console.print(
                f"{s}: scored on {scored} of {total} images (trainer.limit_val_batches); "
                "bicubic on the same images"
            )
    console.print(f"run directory : {result['run_dir']}")
    console.print(f"checkpoint    : {result['checkpoint']}")
    if result.get("best_checkpoint"):
        console.print(f"best          : {result['best_checkpoint']}")
    if result.get("csv_dir"):
        console.print(f"CSV metrics   : {result['csv_dir']}/metrics.csv")
    if result.get("wandb_dir"):
        run_path = str(result["wandb_dir"]).removesuffix("/files")
        hint = (
            f"  (offline: upload with `wandb sync {run_path}`)"
            if result.get("wandb_offline")
            else ""
        )
        console.print(f"W&B run       : {run_path}{hint}")


def final_rows(
    model_name: str, metrics: dict[str, float], bicubic: dict[str, tuple[float, float]]
) -> list[dict[str, Any]]:
    """Rows (method, set, psnr_y, ssim_y) of the final table, model then bicubic."""
    rows = []
    for name, (b_psnr, b_ssim) in bicubic.items():
        rows.append(
            {
                "method": model_name,
                "set": name,
                "psnr_y": metrics.get(f"val/psnr_y/{name}", float("nan")),
                "ssim_y": metrics.get(f"val/ssim_y/{name}", float("nan")),
            }
        )
        rows.append({"method": "bicubic", "set": name, "psnr_y": b_psnr, "ssim_y": b_ssim})
    return rows


def image_rows(
    image_scores: Mapping[str, Sequence[tuple[int, str, float, float]]],
    bicubic: Mapping[str, Mapping[str, tuple[float, float]]],
) -> list[dict[str, Any]]:
    """Rows of the per-image table: set, image, the model's PSNR/SSIM (``SRModule``'s
    ``image_scores`` of the final validation), bicubic's PSNR of the image and the gain
    over it (``delta_psnr_y`` = psnr_y - bicubic_psnr_y), set by set, images in order."""
    rows = []
    for set_name, images in image_scores.items():
        for _, image, psnr, ssim in images:
            b_psnr = bicubic.get(set_name, {}).get(image, (float("nan"),))[0]
            rows.append(
                {
                    "set": set_name,
                    "image": image,
                    "psnr_y": psnr,
                    "ssim_y": ssim,
                    "bicubic_psnr_y": b_psnr,
                    "delta_psnr_y": psnr - b_psnr,
                }
            )
    return rows


def per_image_rows(
    model: str, scale: int, scores: ImageScores, bicubic: ImageScores
) -> list[dict[str, Any]]:
    """The per-image rows of one model (``per_image.csv``): set, image, its PSNR/SSIM
    and the bicubic baseline's of the same image, set by set in the sets' order."""
    rows = []
    for set_name, images in scores.items():
        base = {index: (p, s) for index, _, p, s in bicubic[set_name]}
        for index, image, psnr, ssim in images:
            b_psnr, b_ssim = base[index]
            rows.append(
                {
                    "model": model,
                    "scale": scale,
                    "set": set_name,
                    "image": image,
                    "psnr_y": psnr,
                    "ssim_y": ssim,
                    "bicubic_psnr_y": b_psnr,
                    "bicubic_ssim_y": b_ssim,
                }
            )
    return rows
