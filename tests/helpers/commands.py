"""Running the commands as a user types them, and reading back what they wrote."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def run(cmd: str, cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """Run ``cmd`` through bash, as typed at a prompt, offline and without a W&B key."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environ.update(PATH=f"{BIN}{os.pathsep}{environ['PATH']}", COLUMNS="120", **env)
    return subprocess.run(
        ["bash", "-c", cmd], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout
    )


def start(cmd: str, cwd: Path, **env) -> subprocess.Popen:
    """Start ``cmd`` as ``run`` would (its own process, so signals reach it), output piped."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environ.update(PATH=f"{BIN}{os.pathsep}{environ['PATH']}", COLUMNS="120")
    environ.update(env)
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["bash", "-c", f"exec {cmd}"],
        cwd=cwd,
        env=environ,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def wandb_records(wandb_dir: Path) -> dict:
    """What an offline W&B run recorded, read back through `wandb leet inspect --json`.

    ``wandb_dir``: a run's ``wandb`` folder holding one offline run, or an ``offline-run-*``
    folder. ``metrics``: the define_metric records; ``artifacts``: the logged artifacts.
    """
    if wandb_dir.name.startswith("offline-run-"):
        run_dir = wandb_dir
    else:
        (run_dir,) = wandb_dir.glob("offline-run-*")
    out = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rec: dict = {
        "history": [],
        "summary": {},
        "exit_code": None,
        "run": None,
        "metrics": [],
        "artifacts": [],
    }
    for line in out.splitlines():
        r = json.loads(line)
        if r["type"] == "run":
            rec["run"] = r["run"]
        elif r["type"] == "history":
            rec["history"].append(r["history"]["item"])
        elif r["type"] == "summary":
            rec["summary"].update(r["summary"].get("update", {}))
        elif r["type"] == "metric":
            rec["metrics"].append(r["metric"])
        elif r["type"] == "artifact":
            rec["artifacts"].append(r["artifact"])
        elif r["type"] == "exit":
            rec["exit_code"] = r["exit"].get("exit_code", 0)
    return rec
