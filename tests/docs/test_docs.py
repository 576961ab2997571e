"""The documentation: the site builds with no warning, the README stays short, every
relative link resolves, and every command the README and docs/ show is one hdsr accepts.

Commands are read from the ```bash / ```sh / ```console blocks of README.md and
docs/*.md (in ```console blocks, the lines after a ``$ `` prompt). Each is checked in this
process, without running anything:

- the Hydra commands (``hdsr-train``, ``hdsr-prepare``, ``hdsr-eval``) run their entry
  point up to the moment Hydra would start the job (hdsr's own checks of the command line
  included), and the config is then composed with Hydra's compose API, one composition
  per job of a ``-m`` sweep: an unknown key, a missing config option or a bad override
  fails, as it would with ``--cfg job``;
- the other commands run their entry point until its argument parser has parsed the
  arguments: an unknown option or a bad value fails, as ``--help``'s usage would say.
  ``hdsr-search``'s overrides after ``--`` are checked as ``hdsr-train`` overrides.

A subprocess per command would cost about 10 s of imports each.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
import tomllib
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: [project.scripts]: command -> "module:function"
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
#: the commands that are Hydra apps (``@hydra.main``); the others use argparse
HYDRA_APPS = {"hdsr-train", "hdsr-prepare", "hdsr-eval"}
#: the commands the README shows one example of
README_COMMANDS = {
    "hdsr-train", "hdsr-eval", "hdsr-upscale", "hdsr-export", "hdsr-profile", "hdsr-report",
    "hdsr-search",
}  # fmt: skip

SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
ENV_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=\S*")  # CUDA_VISIBLE_DEVICES=0 hdsr-...
PREFIXES = {"srun"}  # launchers a command may be shown under
OPERATORS = {"&", "&&", "||", ";", "|"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- reading the docs ------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the block's first content line, 1-based
    lang: str
    lines: tuple[str, ...]


def fenced_blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file (also those indented in a list item)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*")
        start, body = i + 2, []
        i += 1
        while i < len(lines) and not closing.fullmatch(lines[i]):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        yield Block(path, start, opening["lang"].lower(), tuple(body))


@dataclass(frozen=True)
class Command:
    where: str  # "docs/training.md:12"
    argv: tuple[str, ...]  # the command's name first

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def commands_in(block: Block) -> Iterator[Command]:
    """hdsr commands of a shell block: continuation lines joined, comments, environment
    assignments, ``srun`` and a trailing ``&`` removed; ``a && b`` gives two commands."""
    if block.lang not in SHELL_LANGUAGES:
        return
    j = 0
    while j < len(block.lines):
        line, number = block.lines[j], block.line + j
        j += 1
        if block.lang == "console":
            if not line.startswith("$ "):
                continue  # the command's output
            line = line[2:]
        while line.endswith("\\") and j < len(block.lines):
            line = line[:-1] + " " + block.lines[j]
            j += 1
        words = shlex.split(line, comments=True)
        segments: list[list[str]] = [[]]
        for word in words:
            if word in OPERATORS:
                segments.append([])
            else:
                segments[-1].append(word)
        for segment in segments:
            while segment and (ENV_ASSIGNMENT.fullmatch(segment[0]) or segment[0] in PREFIXES):
                segment.pop(0)
            if segment and segment[0] in SCRIPTS:
                yield Command(f"{relative(block.path)}:{number}", tuple(segment))


def doc_commands(paths: list[Path] = DOC_FILES) -> list[Command]:
    return [cmd for path in paths for block in fenced_blocks(path) for cmd in commands_in(block)]


def prose(path: Path) -> str:
    """The file without its code blocks and code spans (where a link is not a link)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(\s*)(`{3,}|~{3,}).*?^\1\2\s*$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """A heading's anchor, as Python-Markdown's toc (mkdocs) and GitHub make it."""
    text = re.sub(r"[`*_]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(path), re.M)}


# -- running an entry point up to its arguments ----------------------------------------


class HydraReached(BaseException):
    """Raised where Hydra would compose the config and run the job."""


class ArgumentsParsed(BaseException):
    """Raised right after an argparse parser parsed the command line."""


@dataclass
class Outcome:
    stopped: BaseException | None  # HydraReached / ArgumentsParsed, None: neither reached
    error: str  # why the command was refused ("" when it was not)


def run_until_parsed(argv: tuple[str, ...], hydra: bool) -> Outcome:
    """Run the entry point of ``argv[0]`` on ``argv[1:]`` until Hydra would start the job
    (``hydra``) or argparse has parsed the arguments; nothing runs past that point."""
    module, _, function = SCRIPTS[argv[0]].partition(":")
    entry: Callable[[], Any] = getattr(importlib.import_module(module), function)

    def reached(**kwargs: Any) -> None:
        raise HydraReached(kwargs)

    parse_known_args = argparse.ArgumentParser.parse_known_args

    def parsed(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None):
        namespace, extras = parse_known_args(self, args, namespace)
        raise ArgumentsParsed(namespace, extras)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as m:
        if hydra:  # Hydra parses its own command line with argparse, then calls _run_hydra
            m.setattr(importlib.import_module("hydra.main"), "_run_hydra", reached)
        else:
            m.setattr(argparse.ArgumentParser, "parse_known_args", parsed)
        m.setattr(sys, "argv", list(argv))
        try:
            with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
                status = entry()
        except (HydraReached, ArgumentsParsed) as stop:
            return Outcome(stop, "")
        except SystemExit as stop:
            said = out.getvalue().strip().splitlines()  # argparse: usage, then the error
            return Outcome(None, f"exit status {stop.code}: {said[-1] if said else ''}")
        except Exception as err:  # noqa: BLE001 - a command refused for any reason
            return Outcome(None, f"{type(err).__name__}: {err}")
    return Outcome(None, f"returned {status!r} before parsing its arguments: {out.getvalue()}")


def compose_jobs(reached: HydraReached) -> None:
    """Compose the config of each job of what Hydra was about to run; raise if one fails."""
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    kwargs = reached.args[0]
    args, config_path = kwargs["args"], kwargs["config_path"]
    overrides = list(args.overrides)
    jobs = [overrides]
    if args.multirun:
        parsed = OverridesParser.create().parse_overrides(overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    if config_path.startswith("pkg://"):
        init = initialize_config_module(config_path.removeprefix("pkg://"), version_base="1.3")
    else:
        init = initialize_config_dir(str(Path(config_path).resolve()), version_base="1.3")
    with init:
        for job in jobs:
            compose(config_name=kwargs["config_name"], overrides=job)


def refusal(command: Command) -> str:
    """Why hdsr would refuse ``command`` ("" when it accepts it)."""
    name, argv = command.argv[0], command.argv
    if name in HYDRA_APPS:
        if "--experimental-rerun" in argv:
            return "--experimental-rerun would run the job; not checked"
        outcome = run_until_parsed(argv, hydra=True)
        if outcome.error:
            return outcome.error
        if not isinstance(outcome.stopped, HydraReached):
            return f"{name} did not reach Hydra: is it still a Hydra app?"
        try:
            compose_jobs(outcome.stopped)
        except Exception as err:  # noqa: BLE001 - Hydra's composition errors
            return f"{type(err).__name__}: {err}"
        return ""
    passthrough: tuple[str, ...] = ()
    if name == "hdsr-search" and "--" in argv:  # hdsr-train overrides for every trial
        at = argv.index("--")
        argv, passthrough = argv[:at], argv[at + 1 :]
    outcome = run_until_parsed(argv, hydra=False)
    if outcome.error:
        return outcome.error
    if not isinstance(outcome.stopped, ArgumentsParsed):
        return f"{name} parsed no arguments"
    extras = outcome.stopped.args[1]
    if extras:
        return f"unrecognized arguments: {' '.join(extras)}"
    if passthrough:
        train = Command(command.where, ("hdsr-train", *passthrough))
        problem = refusal(train)
        return f"the overrides after --: {problem}" if problem else ""
    return ""


# -- the tests -------------------------------------------------------------------------


def test_the_site_builds_with_no_warning(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.fail(f"{mkdocs} is missing: install the docs tools (pip install -e '.[test]')")
    build = subprocess.run(
        [str(mkdocs), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = build.stdout + build.stderr
    assert build.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_readme_is_short_and_links_resolve():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"
    broken = []
    for path in DOC_FILES:
        for m in LINK.finditer(prose(path)):
            target = m["target"]
            if SCHEME.match(target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{relative(path)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{relative(path)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page_and_shows_every_command():
    readme = README.read_text(encoding="utf-8")
    unlinked = [p.name for p in DOC_FILES[1:] if f"](docs/{p.name}" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"
    shown = {cmd.argv[0] for cmd in doc_commands([README])}
    assert README_COMMANDS <= shown, f"README.md shows no {sorted(README_COMMANDS - shown)}"
    documented = {cmd.argv[0] for cmd in doc_commands()}
    assert set(SCRIPTS) <= documented, f"no docs example of {sorted(set(SCRIPTS) - documented)}"
    assert HYDRA_APPS <= set(SCRIPTS)


def test_every_command_in_the_docs_is_accepted():
    commands = doc_commands()
    assert len(commands) > 30, [str(c) for c in commands]
    verdicts: dict[tuple[str, ...], str] = {}  # one check per distinct command
    for cmd in commands:
        if cmd.argv not in verdicts:
            verdicts[cmd.argv] = refusal(cmd)
    refused = [f"{cmd}\n    -> {verdicts[cmd.argv]}" for cmd in commands if verdicts[cmd.argv]]
    assert not refused, "commands in the docs that hdsr refuses:\n" + "\n".join(refused)


@pytest.mark.parametrize(
    "line",
    [
        "hdsr-train trainer.max_stepz=3",  # a misspelt key
        "hdsr-train -m optimizer.lr=1e-4,2e-4 trainer.max_stepz=3",  # ... in a sweep
        "hdsr-train -m model=ablation/nope*",  # a pattern matching no option
        "hdsr-train model=ablation/r7_upper_onl",  # a missing config option
        "hdsr-train optim.lr=1e-4",  # a renamed key
        "hdsr-train ckpt_path=<run>/last.ckpt",  # a placeholder Hydra cannot parse
        "hdsr-train --cfgg job",  # an unknown Hydra flag
        "hdsr-eval tiles=256",
        "hdsr-prepare -m data.scale=2,3",
        "hdsr-upscale in.png -o out --ckpt c.pt --tilee 256",
        "hdsr-upscale in.png -o out --ckpt c.pt --max-memory lots",
        "hdsr-export c.pt -o m.onnx --sizes 17by23",
        "hdsr-profile --scale 5",
        "hdsr-report runs/t1 --macs-input big",
        "hdsr-search space.yaml --trialz 8",
        "hdsr-search space.yaml -- trainer.max_stepz=3",
    ],
)
def test_the_check_refuses_a_wrong_command(line):
    block = Block(README, 1, "bash", (line,))
    (command,) = commands_in(block)
    assert refusal(command), f"{line!r} was accepted"


def test_commands_are_read_as_a_shell_reads_them():
    block = Block(
        README,
        10,
        "bash",
        (
            "#!/bin/bash",
            "#SBATCH --array=0-3",
            "CUDA_VISIBLE_DEVICES=0 hdsr-search s.yaml -- trainer=gpu &   # one worker",
            "srun hdsr-train a=1 \\",
            "    'b=[1,2]'",
            "make demo && hdsr-eval ckpt=x.ckpt",
        ),
    )
    assert [(c.where, c.argv) for c in commands_in(block)] == [
        ("README.md:12", ("hdsr-search", "s.yaml", "--", "trainer=gpu")),
        ("README.md:13", ("hdsr-train", "a=1", "b=[1,2]")),
        ("README.md:15", ("hdsr-eval", "ckpt=x.ckpt")),
    ]
    console = Block(README, 1, "console", ("$ hdsr-report runs/t1", "hdsr-train output"))
    assert [c.argv for c in commands_in(console)] == [("hdsr-report", "runs/t1")]
