"""The ablation table and validation curves of a multirun directory (``hdsr-report``).

Reads each job's resolved config (``.hydra/config.yaml``, as data: it may only name
hdsr's networks, and a YAML tag other than the plain ones, ``!!python/object`` and the
like, is refused before anything is constructed) and CSV logs
(``csv/version_*/metrics.csv``), so it works without W&B.

A run whose config or metrics cannot be read (:class:`DamagedRun`: garbled CSV rows, bad
YAML, a refused tag, a missing key, a config that names no hdsr network) is skipped with
a warning naming the file when :func:`collect` is given a list for them; the report of the
other runs is still written and lists the skipped ones.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from hdsr.errors import UntrustedConfigError
from hdsr.evaluation.complexity import count_macs
from hdsr.evaluation.published import TABLE1
from hdsr.models.hdsrnet import count_parameters
from hdsr.models.registry import build_network


class DamagedRun(ValueError):
    """A run folder's config or metrics file that cannot be read; the message names the
    file (and the line) and what is wrong."""


_VERSION = re.compile(r"version_(\d+)")


def read_metrics(job_dir: Path) -> list[dict[str, float]]:
    """Every logged row of a run, all its CSV versions in order (numbers as floats).

    Raises :class:`DamagedRun` naming the file and line of a row that is not numbers under
    the header (garbled, more fields than the header, not text)."""
    versions = sorted(
        (
            p
            for p in (job_dir / "csv").glob("version_*/metrics.csv")
            if _VERSION.fullmatch(p.parent.name)
        ),
        key=lambda p: int(p.parent.name.split("_")[1]),
    )
    return [row for path in versions for row in _read_csv(path)]


def _read_csv(path: Path) -> list[dict[str, float]]:
    rows = []
    read = 0  # lines read so far: the last one is the row at hand

    def counted(f):
        nonlocal read
        for text in f:
            read += 1
            yield text

    try:
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(counted(f)):
                where = f"{path}: line {read}"
                if None in r:  # more fields than the header
                    n = len(r) - 1 + len(r[None])
                    raise DamagedRun(f"{where}: {n} fields, the header has {len(r) - 1}")
                row = {}
                for k, v in r.items():
                    if v in ("", None):  # a short row: the rest unlogged
                        continue
                    try:
                        row[k] = float(v)
                    except ValueError:
                        raise DamagedRun(f"{where}: {k}={v[:40]!r} is not a number") from None
                rows.append(row)
    except csv.Error as err:
        raise DamagedRun(f"{path}: line {read}: {err}") from None
    except UnicodeDecodeError:
        raise DamagedRun(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise DamagedRun(f"{path}: cannot read it ({err.strerror or err})") from None
    return rows


#: the YAML tags a run's config may carry: plain data only
_PLAIN_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str", "seq", "map")
}


def read_config(cfg_file: Path):
    """A run's ``.hydra/config.yaml`` as an OmegaConf ``DictConfig``, read as data.

    Any YAML tag but the plain ones (``!!python/object``, ``!!python/name``, local tags)
    is refused before the file is constructed; that, a file that is not YAML or not a
    mapping raises :class:`DamagedRun` naming the file and line."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    try:
        text = cfg_file.read_text(encoding="utf-8")
        events = list(yaml.parse(text, Loader=yaml.SafeLoader))
    except (OSError, UnicodeDecodeError) as err:
        raise DamagedRun(f"{cfg_file}: cannot read it ({err})") from None
    except yaml.YAMLError as err:
        raise DamagedRun(f"{cfg_file}: {_yaml_problem(err)}") from None
    for event in events:
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _PLAIN_TAGS:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise DamagedRun(
                f"{cfg_file}: line {event.start_mark.line + 1}: the YAML tag {shown} is "
                "refused (a run's config is plain data; nothing in it is constructed)"
            )
    try:
        cfg = OmegaConf.create(text)
    except Exception as err:  # noqa: BLE001 - yaml's or omegaconf's error, said in a line
        why = _yaml_problem(err) if isinstance(err, yaml.YAMLError) else _first_line(err)
        raise DamagedRun(f"{cfg_file}: {why}") from None
    if not isinstance(cfg, DictConfig):
        raise DamagedRun(f"{cfg_file}: not a mapping of config keys")
    return cfg


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _yaml_problem(err: Exception) -> str:
    """A YAML error in one line: ``line N: what``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or _first_line(err)
    return (
        f"line {mark.line + 1}: not valid YAML ({problem})"
        if mark
        else f"not valid YAML ({problem})"
    )


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


def _config_value(cfg, key: str, cfg_file: Path):
    """``cfg``'s ``key``, interpolations resolved (a node as plain containers), or
    :class:`DamagedRun` saying why not."""
    from omegaconf import Container, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if isinstance(value, Container):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as err:
        raise DamagedRun(f"{cfg_file}: {key}: {_first_line(err)}") from None
    if value is None:
        raise DamagedRun(f"{cfg_file}: no {key}")
    return value


def read_run(job: Path, macs_input: tuple[int, int]) -> dict[str, Any]:
    """One job's record (see :func:`collect`); :class:`DamagedRun` or
    :class:`~hdsr.errors.UntrustedConfigError` (naming the file) when it cannot be read."""
    cfg_file = job / ".hydra" / "config.yaml"
    cfg = read_config(cfg_file)
    name = str(_config_value(cfg, "model.name", cfg_file))
    scale = _config_value(cfg, "data.scale", cfg_file)
    if isinstance(scale, str) and scale.strip().isdigit():
        scale = int(scale)
    if isinstance(scale, bool) or not isinstance(scale, int):
        raise DamagedRun(f"{cfg_file}: data.scale={scale!r} is not a whole number")
    # a run folder's config is data: it may only name one of hdsr's networks
    net_cfg = _config_value(cfg, "model.net", cfg_file)
    net = build_network(net_cfg, str(cfg_file), "model.net")
    macs = count_macs(net, macs_input)
    rows = read_metrics(job)
    m = re.match(r"r(\d)_", name)
    paper = TABLE1.get(int(m.group(1))) if m else None
    return {
        "run": job.name,
        "variant": name,
        "scale": scale,
        "psnr": final_values(rows, "val/psnr_y/"),
        "ssim": final_values(rows, "val/ssim_y/"),
        "params": count_parameters(net),
        "macs": macs["total"],
        "paper": paper,
        "curves": val_curves(rows),
    }


def collect(
    sweep_dir: Path, macs_input: tuple[int, int], skipped: list[str] | None = None
) -> list[dict[str, Any]]:
    """One record per job: variant, scale, final PSNR/SSIM per set, params, MACs, curves.

    A damaged run (:class:`DamagedRun`, or a config naming no hdsr network:
    :class:`~hdsr.errors.UntrustedConfigError`) raises, or, given ``skipped``, is left
    out and its message (which names the file) appended there."""
    records = []
    for job in job_dirs(sweep_dir):
        try:
            records.append(read_run(job, macs_input))
        except (DamagedRun, UntrustedConfigError) as err:
            if skipped is None:
                raise
            skipped.append(str(err))
    return records


def write_table(
    records: list[dict[str, Any]],
    out: Path,
    macs_input: tuple[int, int],
    skipped: list[str] | None = None,
) -> None:
    """``ablation.csv`` and ``ablation.md`` in ``out``; the md lists the ``skipped``
    (damaged) runs under the table."""
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
        "paper's Table I figures (x4, Urban100) beside them.\n\n"
        + "\n".join(md)
        + "\n"
        + "".join(f"\nSkipped, unreadable: {why}\n" for why in skipped or [])
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
