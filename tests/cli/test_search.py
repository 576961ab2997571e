"""hdsr-search: a search on the demo data, kill and resume, two workers on one study,
pruning, and the refusal of bad search spaces."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna")

from hdsr import search  # noqa: E402
from hdsr.cli.search import main as search_main  # noqa: E402
from helpers.commands import run, start  # noqa: E402
from helpers.prefork import Forked  # noqa: E402

#: tiny trials on the demo data (as in test_train_e2e.py): seconds each, most of it imports
TINY = [
    "trainer.limit_val_batches=1",
    "data.patches_per_epoch=4",
    "data.batch_size=2",
    "data.patch_size=32",
    "logger=csv",
    "model.net.n_feats=8",
    "model.net.n_blocks=1",
    "model.net.lower_layers=2",
    "trainer.enable_progress_bar=false",
]
METRIC = "val/psnr_y/demo"


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def space_file(tmp_path: Path, pruner: str = "{kind: nop}", max_steps: int = 4) -> Path:
    return write_space(
        tmp_path / "space.yaml",
        f"""
study: tiny
direction: maximize
pruner: {pruner}
sampler: {{kind: tpe, seed: 0}}
params:
  optimizer.lr: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
  model.net.temperature: {{type: float, low: 10, high: 60}}
overrides: [trainer.max_steps={max_steps}]
""",
    )


def load(journal: Path, study: str = "tiny"):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    return optuna.load_study(study_name=study, storage=storage)


def start_worker(cwd: Path, args: list[str], out: Path) -> subprocess.Popen | Forked:
    """An hdsr-search worker as a user starts one, both outputs written to ``out``."""
    return start(f"hdsr-search {shlex.join(args)}", cwd, output=out)


def counted(study) -> list:
    return search.budget_trials(study.get_trials(deepcopy=False))


# --------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_trial_search_on_the_demo_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    space = space_file(tmp_path, pruner="{kind: median, n_startup_trials: 1, n_warmup_steps: 0}")
    assert search_main([str(space), "--trials", "3", "--", *TINY]) == 0
    out = capsys.readouterr().out
    study = load(tmp_path / "runs" / "search" / "tiny" / "study.journal")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    states = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(t.state in states and t.value is not None for t in trials)
    assert trials[0].state == optuna.trial.TrialState.COMPLETE  # nothing to compare it with
    for t in trials:
        run_dir = Path(t.user_attrs[search.RUN_DIR])
        assert run_dir == tmp_path / "runs" / "search" / "tiny" / f"trial_{t.number}"
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        # an ordinary hdsr-train run: its params in its Hydra config, reports at its steps
        config = (run_dir / ".hydra" / "overrides.yaml").read_text()
        assert f"optimizer.lr={t.params['optimizer.lr']!r}" in config
        assert "++logger.wandb.group=tiny" in config
        assert t.intermediate_values and max(t.intermediate_values) <= 4
        # the objective: the best validation PSNR the run logged
        csv = next(run_dir.glob("csv/version_*/metrics.csv")).read_text().splitlines()
        column = csv[0].split(",").index(METRIC)
        logged = [float(r.split(",")[column]) for r in csv[1:] if r.split(",")[column]]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(max(logged))
    best = study.best_trial
    assert f"best trial: {best.number}, {METRIC} = {best.value:.4f}" in out
    assert "3 of 3 trials:" in out and "reproduce it with hdsr-train:" in out
    command = next(line for line in out.splitlines() if line.startswith("  hdsr-train "))
    assert f"optimizer.lr={best.params['optimizer.lr']!r}" in command
    assert "trainer.max_steps=4" in command and "logger=csv" in command
    assert "run_name" not in command and "search_trial" not in command

    # run again: the study has its 3 trials, nothing new runs
    assert search_main([str(space), "--trials", "3", "--", *TINY]) == 0
    assert "loaded (3 trials so far)" in capsys.readouterr().out
    assert len(load(tmp_path / "runs" / "search" / "tiny" / "study.journal").trials) == 3


def wait_for(condition, timeout: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"timed out; worker output:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_killed_search_resumes_its_study_and_the_interrupted_trial(tmp_path):
    space = space_file(tmp_path, max_steps=8)  # validation every 2 steps, last.ckpt each time
    journal = tmp_path / "study.journal"
    args = [str(space), "--storage", str(journal), "--trials", "3", "--", *TINY]
    log = tmp_path / "first.out"
    proc = start_worker(tmp_path, args, log)
    run_1 = tmp_path / "runs" / "search" / "tiny" / "trial_1"

    def trial_1_checkpointed():
        if not journal.is_file():
            return None
        try:
            trials = load(journal).get_trials(deepcopy=False)
        except KeyError:  # the journal is there, the study's record not yet
            return None
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        return complete and (run_1 / "checkpoints" / "last.ckpt").is_file()

    try:
        wait_for(trial_1_checkpointed, 240, proc, log)
        proc.send_signal(signal.SIGKILL)  # the worker only, as the OOM killer would
    finally:
        proc.kill()
        proc.wait()
    before = load(journal).get_trials()
    assert before[0].state == optuna.trial.TrialState.COMPLETE
    assert before[1].state == optuna.trial.TrialState.RUNNING  # left behind by the kill
    reported_before = dict(before[1].intermediate_values)
    assert reported_before  # validated at least once before the kill

    again = run(f"hdsr-search {shlex.join(args)}", tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    study = load(journal)
    trials = study.get_trials()
    # trial 0 is kept as it was; trial 1 was requeued as trial 2, which resumed its run
    assert trials[0].value == before[0].value and trials[0].params == before[0].params
    assert trials[1].state == optuna.trial.TrialState.FAIL
    retry = trials[2]
    assert retry.user_attrs[search.RETRY_OF] == 1 and retry.params == trials[1].params
    assert retry.user_attrs[search.RUN_DIR] == str(run_1)
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert reported_before.items() <= retry.intermediate_values.items()
    assert max(retry.intermediate_values) == 8
    assert "resuming from" in (run_1 / "hdsr-train.out").read_text()
    assert "trial 1 was left running by a worker that stopped: requeued" in again.stdout
    # and the study goes on to its target with a new trial
    assert [t.number for t in counted(study)] == [0, 2, 3]
    assert trials[3].state == optuna.trial.TrialState.COMPLETE
    assert (tmp_path / "runs" / "search" / "tiny" / "trial_3" / "checkpoints").is_dir()
    assert "3 of 3 trials: 3 complete, 0 pruned, 0 failed (1 interrupted and requeued)" in (
        again.stdout
    )


@pytest.mark.slow
def test_a_search_whose_trials_all_failed_exits_non_zero(tmp_path):
    """Two trials whose training cannot start (a DIV2K folder that is not there)."""
    space = space_file(tmp_path)
    missing = tmp_path / "no_such_DIV2K"
    args = [str(space), "--storage", str(tmp_path / "study.journal"), "--trials", "2", "--"]
    args += [*TINY, "data=div2k", f"data.root={missing}", f"data.benchmark_root={missing}"]
    proc = run(f"hdsr-search {shlex.join(args)}", tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 of 2 trials: 0 complete, 0 pruned, 2 failed" in proc.stdout
    assert "every trial failed" in proc.stderr


@pytest.mark.slow
def test_two_workers_share_one_study_and_run_distinct_trials(tmp_path):
    space = space_file(tmp_path)
    journal = tmp_path / "shared.journal"
    args = [str(space), "--storage", str(journal), "--trials", "2", "--", *TINY]
    logs = [tmp_path / "worker_a.out", tmp_path / "worker_b.out"]
    procs = [start_worker(tmp_path, args, log) for log in logs]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)
    ran = []
    for out in outputs:
        line = next(x for x in out.splitlines() if x.startswith("this worker ran trial(s) "))
        ran.append(line.removeprefix("this worker ran trial(s) ").split(", "))
    assert all(r != ["none"] for r in ran), outputs  # both took part
    numbers = sorted(int(n) for r in ran for n in r)
    trials = load(journal).get_trials()
    assert numbers == [t.number for t in trials] == [0, 1]  # distinct, total = sum
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    run_dirs = {t.user_attrs[search.RUN_DIR] for t in trials}
    assert len(run_dirs) == 2 and all(
        Path(d, "checkpoints", "last.ckpt").is_file() for d in run_dirs
    )
    assert trials[0].params != trials[1].params


# --------------------------------------------------------------------------------------
# pruning
# --------------------------------------------------------------------------------------


def fake_trainer(psnr: float, step: int, max_steps: int = 100) -> SimpleNamespace:
    import torch

    return SimpleNamespace(
        sanity_checking=False,
        callback_metrics={METRIC: torch.tensor(psnr)},
        global_step=step,
        max_steps=max_steps,
        state=SimpleNamespace(fn="fit"),
        world_size=1,
        should_stop=False,
    )


def study_with_two_good_runs():
    study = optuna.create_study(
        direction="maximize", pruner=search.build_pruner({"kind": "median", "n_startup_trials": 2})
    )
    for final in (30.0, 31.0):
        study.add_trial(
            optuna.trial.create_trial(
                value=final, intermediate_values={10: final - 4, 20: final - 2, 30: final}
            )
        )
    return study


def test_a_trial_with_a_bad_curve_is_pruned_and_training_stops():
    study = study_with_two_good_runs()
    trial = study.ask()
    callback = search.TrialCallback(trial=trial, metric=METRIC)
    trainer = fake_trainer(26.5, step=10)  # as good as the others at step 10
    callback.on_validation_end(trainer, None)
    assert not trainer.should_stop
    trainer = fake_trainer(20.0, step=20)  # far below the median at step 20
    callback.on_validation_end(trainer, None)
    assert trainer.should_stop
    frozen = study.trials[trial.number]
    assert frozen.intermediate_values == {10: 26.5, 20: 20.0}
    assert frozen.user_attrs[search.PRUNED_AT] == 20


def test_good_curves_and_finished_runs_are_not_pruned():
    study = study_with_two_good_runs()
    trial = study.ask()
    callback = search.TrialCallback(trial=trial, metric=METRIC)
    for step, psnr in ((10, 27.0), (20, 29.5)):
        trainer = fake_trainer(psnr, step)
        callback.on_validation_end(trainer, None)
        assert not trainer.should_stop
    trainer = fake_trainer(5.0, step=30, max_steps=30)  # the last validation: it is complete
    callback.on_validation_end(trainer, None)
    assert not trainer.should_stop and search.PRUNED_AT not in study.trials[-1].user_attrs
    trainer = fake_trainer(5.0, step=30)  # a step reported once is not reported again
    callback.on_validation_end(trainer, None)
    assert study.trials[-1].intermediate_values[30] == 5.0


def test_the_callback_does_nothing_outside_a_search(monkeypatch):
    monkeypatch.delenv(search.TRIAL_ENV, raising=False)
    callback = search.TrialCallback()
    trainer = fake_trainer(1.0, step=10)
    callback.on_validation_end(trainer, None)
    assert not callback.active and not trainer.should_stop


# --------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------

GOOD_PARAMS = """
params:
  optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
"""


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (  # a key the hdsr-train config does not have, with the closest one
            "params:\n  model.net.temperatur: {type: float, low: 10, high: 60}\n",
            ["params.model.net.temperatur", "did you mean model.net.temperature"],
        ),
        (
            "params:\n  optimizer.lr: {type: uniform, low: 1.0e-5, high: 1.0e-3}\n",
            ["params.optimizer.lr.type", "'uniform'"],
        ),
        (
            "params:\n  model.net.temperature: {type: float, low: 60, high: 10}\n",
            ["params.model.net.temperature", "low (60) must be smaller than high (10)"],
        ),
        (
            "params:\n  data.batch_size: {type: int, low: 8, high: 8}\n",
            ["params.data.batch_size", "low (8) must be smaller than high (8)"],
        ),
        ("params:\n  data.batch_size: {type: categorical, choices: []}\n", ["data.batch_size"]),
        ("prunner: {kind: median}\n" + GOOD_PARAMS, ["unknown key 'prunner'"]),
        ("pruner: {kind: median, warmup: 3}\n" + GOOD_PARAMS, ["pruner", "'warmup'"]),
        ("sampler: {kind: grid}\n" + GOOD_PARAMS, ["sampler.kind", "'grid'"]),
        (
            "params:\n  optimizer.lr: {type: float, low: 1e-5, high: 1.0e-3}\n",
            ["params.optimizer.lr.low", "1.0e-5"],  # YAML's string 1e-5, with the fix
        ),
        (
            "params:\n  optimizer.lr: {type: float, low: 0.1, high: 1, lg: true}\n",
            ["params.optimizer.lr", "unknown field 'lg'"],
        ),
        ("params:\n  model.net: {type: categorical, choices: [1, 2]}\n", ["params.model.net"]),
        (
            "params:\n  optimizer: {type: categorical, choices: [adam, adamz]}\n",
            ["params.optimizer='adamz'"],
        ),
        (  # hdsr-train's own checks, for every bound
            "params:\n  data.batch_size: {type: int, low: 1, high: 4096}\n",
            ["params.data.batch_size=4096", "patches_per_epoch"],
        ),
        (  # bounds hdsr-train refuses up front (PyTorch or the network would, later)
            "params:\n  optimizer.lr: {type: float, low: -1.0e-3, high: 1.0e-3}\n",
            ["params.optimizer.lr=-0.001", "optimizer.lr must be a positive number"],
        ),
        (
            "params:\n  model.net.temperature: {type: float, low: 0, high: 60}\n",
            ["params.model.net.temperature=0", "model.net.temperature must be a positive"],
        ),
        (
            "params:\n  scheduler.gamma: {type: float, low: 0.5, high: 2}\n"
            "overrides: ['optimizer.betas=[0.9,1.5]']\n",
            ["optimizer.betas must be two numbers in [0, 1)"],
        ),
        (  # an untrusted file cannot instantiate anything
            "overrides: ['+callbacks.x={_target_: os.system}']\n" + GOOD_PARAMS,
            ["overrides"],
        ),
        ("metric: val/psnr_y/Set5\n" + GOOD_PARAMS, ["metric", "val/psnr_y/demo"]),
        ("pruner: {kind: percentile}\n" + GOOD_PARAMS, ["pruner.percentile is missing"]),
        (  # Optuna's own checks of an argument
            "pruner: {kind: percentile, percentile: 150}\n" + GOOD_PARAMS,
            ["pruner", "150"],
        ),
        ("- not a mapping\n", ["mapping"]),
    ],
)
def test_bad_search_spaces_exit_2_naming_the_key(tmp_path, capsys, text, named):
    space = write_space(tmp_path / "bad.yaml", text)
    assert search_main([str(space), "--storage", str(tmp_path / "s.journal")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hdsr-search: error: ") and str(space) in err
    for part in named:
        assert part in err, err
    assert not (tmp_path / "s.journal").exists() and not (tmp_path / "runs").exists()


def test_bad_command_lines_exit_2(tmp_path, capsys):
    space = write_space(tmp_path / "ok.yaml", GOOD_PARAMS)
    for argv, named in (
        ([str(space), "--", "run_name=x"], "run_name"),
        ([str(space), "--", "optimizer.lr=1e-3"], "params.optimizer.lr is also set"),
        ([str(space), "--", "trainer.max_step=3"], "trainer.max_step"),
        ([str(space), "--", "-m", "seed=1,2"], "-m"),
        ([str(space), "--trials", "0"], "--trials"),
        ([str(space), "--timeout", "nan"], "--timeout must be positive and finite"),
        ([str(space), "--timeout", "inf"], "--timeout must be positive and finite"),
        ([str(space), "--stale-after", "nan"], "--stale-after must be positive and finite"),
        ([str(space), "--study", "../x"], "--study"),
        ([str(space), "seed=1"], "after --"),
        ([str(tmp_path / "missing.yaml")], "no such search space file"),
    ):
        assert search_main(argv) == 2, argv
        assert named in capsys.readouterr().err, argv


# --------------------------------------------------------------------------------------
# trials left running, the study's target, a missing extra
# --------------------------------------------------------------------------------------


def test_a_running_trial_is_dead_when_its_worker_and_trainer_are_gone():
    gone = subprocess.Popen(["true"])
    gone.wait()
    here, now = search.host_id(), time.time()

    def trial(host, worker, trainer=None, beat=now):
        attrs = {search.HOST: host, search.WORKER_PID: worker, search.HEARTBEAT: beat}
        attrs[search.TRAINER_PID] = trainer
        return SimpleNamespace(system_attrs=attrs, datetime_start=None)

    liveness = search.liveness
    assert liveness(trial(here, os.getpid()), now, 600, here) == search.ALIVE
    assert liveness(trial(here, gone.pid), now, 600, here) == search.DEAD  # no wait
    assert liveness(trial(here, gone.pid, os.getpid()), now, 600, here) == search.BUSY
    # a reused pid with an old heartbeat is no proof of life
    assert liveness(trial(here, os.getpid(), beat=now - 700), now, 600, here) == search.DEAD
    # another host: the heartbeat decides
    assert liveness(trial("elsewhere", gone.pid), now, 600, here) == search.ALIVE
    assert liveness(trial("elsewhere", 1, beat=now - 601), now, 600, here) == search.DEAD
    # this host recorded, the worker's pid not yet (separate appends): just taken, not left
    assert liveness(trial(here, None), now, 600, here) == search.ALIVE
    assert liveness(trial(here, None, beat=now - 601), now, 600, here) == search.DEAD


def test_requeued_and_surplus_trials_do_not_count_toward_the_target():
    states = optuna.trial.TrialState
    trials = [
        SimpleNamespace(number=0, state=states.COMPLETE, user_attrs={}),
        SimpleNamespace(number=1, state=states.FAIL, user_attrs={}),  # requeued as 3
        SimpleNamespace(number=2, state=states.FAIL, user_attrs={}),  # a real failure
        SimpleNamespace(number=3, state=states.RUNNING, user_attrs={search.RETRY_OF: 1}),
        SimpleNamespace(number=4, state=states.FAIL, user_attrs={search.SURPLUS: True}),
    ]
    assert [t.number for t in search.budget_trials(trials)] == [0, 2, 3]


def test_without_optuna_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    space = write_space(tmp_path / "ok.yaml", GOOD_PARAMS)
    assert search_main([str(space)]) == 1
    assert "pip install 'hdsr[search]'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# the journal: torn, damaged, not a journal, a full disk
# --------------------------------------------------------------------------------------


def _journal_of_two_trials(path: Path) -> None:
    """The journal of study ``tiny`` (space_file's) holding two complete trials, its last
    record a study attribute."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    dists = {
        "optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True),
        "model.net.temperature": optuna.distributions.FloatDistribution(10, 60),
    }
    for i in range(2):
        params = {"optimizer.lr": 1e-4 * (i + 1), "model.net.temperature": 30.0}
        attrs = {search.RUN_DIR: str(path.parent / f"trial_{i}"), search.COMMAND: ["seed=0"]}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dists, value=20.0 + i, user_attrs=attrs
            )
        )
    study.set_user_attr("note", "the last record")


def test_a_torn_journal_tail_is_removed_before_anything_is_appended(tmp_path, capsys):
    """A write cut short (a full disk, a kill) left half a record at the end: Optuna's next
    append would continue that line and the study could never be read again."""
    journal = tmp_path / "study.journal"
    _journal_of_two_trials(journal)
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-40])
    space = space_file(tmp_path)
    assert search_main([str(space), "--storage", str(journal), "--trials", "2", "--", *TINY]) == 0
    out = capsys.readouterr().out
    start = whole[:-1].rfind(b"\n") + 1  # the torn record's first byte
    assert f"its last record (bytes {start}-{len(whole) - 40}) was cut short" in out
    assert "loaded (2 trials so far)" in out and "2 of 2 trials: 2 complete" in out
    (copy,) = tmp_path.glob("study.journal.torn-*")
    assert copy.read_bytes() == whole[:-40] and journal.read_bytes().startswith(whole[:start])
    study = load(journal)  # readable, and appendable: later records parse
    study.set_user_attr("after", 1)
    assert [t.value for t in load(journal).get_trials()] == [20.0, 21.0]
    attrs = load(journal).user_attrs  # the torn record (the "note") never took effect
    assert attrs["after"] == 1 and "note" not in attrs


def test_a_damaged_journal_or_another_file_is_refused_naming_it(tmp_path, capsys):
    space = space_file(tmp_path)
    journal = tmp_path / "study.journal"
    _journal_of_two_trials(journal)
    lines = journal.read_bytes().split(b"\n")
    damaged = b"\n".join([*lines[:2], lines[2][:30] + lines[3], *lines[4:]])
    journal.write_bytes(damaged)
    at = len(lines[0]) + len(lines[1]) + 2
    text = tmp_path / "notes.txt"
    text.write_text("some notes\nnot a journal\n")
    ckpt = tmp_path / "last.ckpt"
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {"w": torch.zeros(3)}}, ckpt)
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    for storage, says in (
        (journal, f"{journal}: a record that is not valid JSON at byte {at} (line 3)"),
        (tmp_path, f"--storage {tmp_path} is a directory"),
        (text, f"{text}: not an Optuna journal"),
        (ckpt, f"{ckpt}: not an Optuna journal"),
        (blocked / "study.journal", f"cannot write the study journal {blocked}/study.journal"),
    ):
        assert search_main([str(space), "--storage", str(storage), "--", *TINY]) == 2, storage
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    assert journal.read_bytes() == damaged and text.read_text().startswith("some notes")


def test_a_full_disk_during_a_journal_write_is_one_line(tmp_path, monkeypatch, capsys):
    """The write fails half done (ENOSPC): one line naming the journal, exit 1; the next run
    removes the torn half record."""
    import errno

    backend = optuna.storages.journal.JournalFileBackend

    def full_disk(self, logs):
        text = "\n".join(__import__("json").dumps(r) for r in logs) + "\n"
        with open(self._file_path, "ab") as f:
            f.write(text.encode()[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backend, "append_logs", full_disk)
    journal = tmp_path / "study.journal"
    space = space_file(tmp_path)
    assert search_main([str(space), "--storage", str(journal), "--", *TINY]) == 1
    err = capsys.readouterr().err
    assert f"writing the study journal {journal}: No space left on device" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.undo()
    assert journal.stat().st_size > 0
    assert "was cut short" in search.study.check_journal(journal)
    assert journal.stat().st_size == 0


def test_a_study_rerun_with_other_settings_stops_saying_what_differs(tmp_path, capsys):
    """Trials trained with other overrides, or drawn from another space, are not
    comparable: a rerun that differs stops (it resumed silently and printed the old
    reproduce command; a widened range crashed the summary)."""
    journal = tmp_path / "study.journal"
    _journal_of_two_trials(journal)  # a study of an earlier version: no settings recorded
    space = space_file(tmp_path)
    args = [str(space), "--storage", str(journal), "--trials", "2", "--", *TINY]
    assert search_main(args) == 0  # records its settings
    assert search_main(args) == 0  # the same command: goes on
    capsys.readouterr()
    wide = space.read_text().replace("low: 1.0e-5", "low: 1.0e-6")
    added = space.read_text().replace(
        "params:\n", "params:\n  seed: {type: int, low: 0, high: 4}\n"
    )
    for text, extra, says in (
        (space.read_text(), ["seed=3"], "(not set) -> seed=3"),
        (space.read_text().replace("max_steps=4", "max_steps=2"), [], "max_steps=4 -> trainer.max"),
        (wide, [], "parameter optimizer.lr has another range or choices"),
        (added, [], "parameter seed added"),
    ):
        changed = write_space(tmp_path / "changed.yaml", text)
        argv = [str(changed), "--storage", str(journal), "--trials", "2", "--", *TINY, *extra]
        assert search_main(argv) == 2
        err = capsys.readouterr().err
        assert "study tiny in" in err and "was run with other settings" in err, err
        assert says in err and "--study NAME" in err, err
    assert len(load(journal).get_trials()) == 2
