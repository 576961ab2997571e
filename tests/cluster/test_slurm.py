"""hdsr on a real SLURM scheduler: the ablation sweep as a job array, a time limit that
falls mid-training, preemption, two-node DDP, search workers in a job array.

The scheduler is the test cluster of ``tests/cluster/slurm.sh`` (``make slurm-up`` as
root; ``.ci/run`` starts it): nodes ``n1`` and ``n2`` on this host, cluster ``hdsrtest``.
The tests submit to no other cluster, and skip, saying why, where it is not running.
Everything runs on the CPU with small networks; each test bounds its own time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers.callbacks import TESTS, pace_overrides
from helpers.commands import BIN, read_csv, run, start

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = "hdsrtest"
#: what resuming, requeueing and sharding test does not depend on the network's size
TINY_NET = "model.net.n_feats=8 model.net.n_blocks=1 model.net.lower_layers=2"
SMALL = (
    "data.batch_size=2 data.patch_size=32 trainer.limit_val_batches=1 "
    "trainer.enable_progress_bar=false"
)
#: a few steps, validated every two
QUICK = f"data.patches_per_epoch=4 {SMALL}"
#: one CPU job per sweep job (the launcher's defaults ask for a GPU)
ON_SLURM = (
    "launcher=slurm trainer.accelerator=cpu hydra.launcher.gpus_per_node=0 "
    "hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=1"
)
METRIC = "val/psnr_y/demo"

#: imported by every Python process of a job (PYTHONPATH): records each unpickling that
#: happens inside torch.load. A weights-only load never calls pickle's find_class; a
#: pickle load does, which raises the "pickle.find_class" audit event.
SPY = """
import os, sys

def _spy(event, args):
    if event != "pickle.find_class":
        return
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith(os.path.join("torch", "serialization.py")):
            with open(os.environ["HDSR_TEST_PICKLE_LOG"], "a") as f:
                f.write(f"{os.getpid()} {args[0]}.{args[1]}\\n")
            return
        frame = frame.f_back

sys.addaudithook(_spy)
"""


def cluster_problem() -> str | None:
    """Why the test cluster cannot be used here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch not found: start the SLURM test cluster as root with `make slurm-up`"
    try:
        shown = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "scontrol show config did not answer in 30 s"
    if shown.returncode != 0:
        return f"no SLURM controller answers ({shown.stderr.strip()[:200]}): `make slurm-up`"
    name = re.search(r"^ClusterName\s*=\s*(\S+)", shown.stdout, re.M)
    if not name or name[1] != CLUSTER:
        found = name[1] if name else "?"
        return f"this SLURM is cluster {found!r}; the tests submit only to {CLUSTER!r}"
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=30
    ).stdout.split("\n")
    states = dict(line.split() for line in nodes if line.strip())
    if any(not states.get(n, "down").startswith(("idle", "mix", "alloc")) for n in ("n1", "n2")):
        return f"the test cluster's nodes are not up: {states}"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(autouse=True)
def cancel_leftover_jobs(tmp_path):
    """A test that fails leaves no job of its own running (it would load the others)."""
    yield
    if shutil.which("squeue") is None:
        return
    queue = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True)
    for line in queue.stdout.splitlines():
        job, _, workdir = line.partition(" ")
        if workdir.startswith(str(tmp_path)):
            subprocess.run(["scancel", job], capture_output=True)


@pytest.fixture
def spy(tmp_path):
    """Environment for a command whose every Python process records pickle loads in
    torch.load, and a scontrol that logs its calls; returns (env, pickle log, scontrol
    log)."""
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    (spy_dir / "sitecustomize.py").write_text(SPY)
    pickles, calls = tmp_path / "pickle_loads.log", tmp_path / "scontrol.log"
    real = shutil.which("scontrol")
    wrapper = spy_dir / "scontrol"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "${{SLURM_JOB_ID:-none}} ${{SLURM_RESTART_COUNT:-0}} $*" >> {calls}\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {
        "PYTHONPATH": f"{spy_dir}{os.pathsep}{TESTS}",
        "HDSR_TEST_PICKLE_LOG": str(pickles),
        "PATH": f"{spy_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    return env, pickles, calls


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def wait_for(check, what: str, timeout: float, proc: subprocess.Popen | None = None):
    t = time.time()
    while True:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"ended before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        assert time.time() - t < timeout, f"no {what} after {timeout} s"
        time.sleep(0.5)


def job_ids(sweep: Path) -> list[str]:
    """The SLURM ids of a sweep's jobs (submitit's folders: <array job>_<task>, or <job> for a
    sweep of one job)."""
    names = [p.name for p in (sweep / ".submitit").iterdir()]
    tasks = sorted(n for n in names if re.fullmatch(r"\d+_\d+", n))
    return tasks or sorted(n for n in names if n.isdigit())


def job_field(job: str, field: str) -> str | None:
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    found = re.search(rf"\b{field}=(\S+)", shown.stdout)
    return found[1] if found else None


def last_val(csv_dir: Path) -> tuple[str, str]:
    """The last logged validation PSNR-Y and SSIM-Y of a run (as written, every start)."""
    rows = [r for v in sorted(csv_dir.iterdir()) for r in read_csv(v / "metrics.csv")]
    row = [r for r in rows if r.get(METRIC)][-1]
    return row[METRIC], row["val/ssim_y/demo"]


def weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["global_step"]


def assert_same_weights(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


# --------------------------------------------------------------------------------------


def test_the_ablation_sweep_is_one_job_array_with_the_local_runs_metrics(cluster, tmp_path):
    # three of the nine variants, by a pattern as users type them: one array task each (the
    # nine together are test_train_e2e's; nine jobs here would only cost 60 more CPU-seconds
    # of start-ups)
    args = f"'model=ablation/r[1-3]*' logger=csv trainer.max_steps=2 {QUICK} {TINY_NET}"
    on_slurm = start(
        f"hdsr-train -m {ON_SLURM} hydra.launcher.timeout_min=10 "
        f"hydra.launcher.array_parallelism=3 {args}",
        tmp_path / "slurm",
    )
    (tmp_path / "local").mkdir()
    local = run(f"hdsr-train -m {args}", tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    code, out, err = finish(on_slurm, 600)
    assert code == 0, err[-3000:]
    sweep, local_sweep = (
        tmp_path / "slurm" / "runs" / "sweep",
        tmp_path / "local" / "runs" / "sweep",
    )
    ids = job_ids(sweep)
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1  # one array, three tasks
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == [f"{n}_x2_s0" for n in ("r1_six_conv", "r2_residual_conv", "r3_no_dynamic")]
    for job in jobs:
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert last_val(sweep / job / "csv") == last_val(local_sweep / job / "csv"), job


# -- time limit -------------------------------------------------------------------------
LONG = (
    "data.patches_per_epoch=64 data.batch_size=4 data.patch_size=48 trainer.limit_val_batches=1 "
    f"trainer.enable_progress_bar=false checkpoint.every_n_train_steps=20 {TINY_NET}"
)
#: fifteen epochs of 16 steps (the last validation writes last.ckpt at the end)
LONG_STEPS = 240
#: a job's steps take 0.4 s of sleep (``Pace``): 96 s and more of training, longer than a
#: job's time before its signal, without a core kept busy (the local reference runs
#: unpaced: sleeping changes no number)
PACED = pace_overrides(0.4)
#: SLURM checks time limits every 30 s: a signal asked 45 s before the end of a 2-minute
#: limit comes 45-75 s after the start, never during start-up (asked 30 s before the end
#: of a 1-minute limit it came at once and killed the job before submitit's handler was
#: in place), and a segment trains for 20-60 s
LIMIT = "hydra.launcher.timeout_min=2 hydra.launcher.signal_delay_s=45"


def requeues(calls: Path) -> list[tuple[str, int]]:
    """(job id, restart count when asked) of each `scontrol requeue` the jobs ran."""
    if not calls.exists():
        return []
    found = []
    for line in calls.read_text().splitlines():
        job, restarts, *argv = line.split()
        if argv[:1] == ["requeue"]:
            found.append((job, int(restarts)))
    return found


@pytest.mark.timeout(900)
def test_a_time_limit_requeues_once_per_signal_and_the_run_ends_bitwise_as_uninterrupted(
    cluster, tmp_path, spy
):
    env, pickles, calls = spy
    args = f"trainer.max_steps={LONG_STEPS} {LONG}"
    limit = LIMIT
    job = start(
        f"hdsr-train -m {ON_SLURM} {limit} hydra.launcher.max_num_timeout=20 {args} {PACED}",
        tmp_path / "slurm",
        **env,
    )
    ref = start(f"hdsr-train -m {args}", tmp_path / "local")
    code, _, err = finish(ref, 900)
    assert code == 0, err[-3000:]
    code, out, err = finish(job, 900)
    assert code == 0, err[-3000:]
    run_dir = tmp_path / "slurm" / "runs" / "sweep" / "hdsrnet_x2_s0"
    (jid,) = job_ids(run_dir.parent)
    asked = requeues(calls)
    assert asked, "the time limit never fell inside the run: no requeue"
    # one requeue per start at most (a second mechanism would requeue the same start
    # again), and every restart was asked for
    assert len({r for _, r in asked}) == len(asked), asked
    assert int(job_field(jid, "Restarts") or -1) == len(asked)
    got, step = weights(run_dir)
    want, want_step = weights(tmp_path / "local" / "runs" / "sweep" / "hdsrnet_x2_s0")
    assert step == want_step == LONG_STEPS
    assert_same_weights(got, want)
    # one W&B run across the restarts (offline run files of one id)
    ids = {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert ids == {(run_dir / "wandb_run_id").read_text().strip()}
    # no checkpoint was unpickled on any path, and nothing says so
    assert not pickles.exists(), pickles.read_text()
    logs = "".join(p.read_text() for p in (run_dir.parent / ".submitit").rglob("*_log.*"))
    assert "weights_only` was not set" not in logs


@pytest.mark.timeout(900)
def test_the_restarts_after_time_limits_are_bounded_by_max_num_timeout(cluster, tmp_path, spy):
    env, _, calls = spy
    args = f"trainer.max_steps=100000 {LONG}"
    limit = LIMIT
    job = start(
        f"hdsr-train -m {ON_SLURM} {limit} hydra.launcher.max_num_timeout=1 {args} {PACED}",
        tmp_path,
        **env,
    )
    code, out, err = finish(job, 600)
    assert code != 0  # the job ended unfinished, and the sweep says so
    assert "timed-out too many times" in out + err
    run_dir = tmp_path / "runs" / "sweep" / "hdsrnet_x2_s0"
    (jid,) = job_ids(run_dir.parent)
    assert len(requeues(calls)) == 1 and job_field(jid, "Restarts") == "1"
    _, step = weights(run_dir)
    assert 0 < step < 100000  # stopped with its checkpoint: rerunning resumes it


@pytest.mark.timeout(900)
def test_a_plain_sbatch_job_requeues_itself_at_most_max_requeues_times(cluster, tmp_path, spy):
    env, _, calls = spy
    script = tmp_path / "train.sbatch"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --time=2 --signal=USR1@45 --requeue --open-mode=append
            #SBATCH --output={tmp_path}/job.out --cpus-per-task=1
            srun hdsr-train trainer.accelerator=cpu slurm.max_requeues=1 logger=csv \\
                trainer.max_steps=100000 {LONG} {PACED}
            """
        )
    )
    code, out, err = finish(start(f"sbatch --parsable {script}", tmp_path, **env), 60)
    assert code == 0, err
    jid = out.strip().split(";")[0]
    wait_for(
        lambda: job_field(jid, "JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
        "end of the job",
        420,
    )
    assert len(requeues(calls)) == 1 and job_field(jid, "Restarts") == "1"
    out = (tmp_path / "job.out").read_text()
    assert "it has restarted 1 times (slurm.max_requeues=1)" in out
    _, step = weights(tmp_path / "runs" / "hdsrnet_x2_s0")
    assert 0 < step < 100000


# -- preemption -------------------------------------------------------------------------
PREEMPT_STEPS = 300
#: 30 s and more of training (0.1 s of sleep a step), checkpointed every 5 steps
PREEMPT = (
    f"logger=csv checkpoint.every_n_train_steps=5 trainer.max_steps={PREEMPT_STEPS} "
    f"data.patches_per_epoch=400 {SMALL} {TINY_NET} {pace_overrides(0.1)}"
)


def _training_job(cwd: Path, env: dict) -> tuple[subprocess.Popen, Path, str]:
    """Submit a PREEMPT run and wait until it trains: (submitting process, run dir, job)."""
    job = start(f"hdsr-train -m {ON_SLURM} hydra.launcher.timeout_min=10 {PREEMPT}", cwd, **env)
    run_dir = cwd / "runs" / "sweep" / "hdsrnet_x2_s0"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    wait_for(lambda: ckpt.exists() and weights(run_dir)[1] > 0, "training", 300, job)
    (jid,) = job_ids(run_dir.parent)
    return job, run_dir, jid


@pytest.mark.timeout(900)
def test_preemption_requeue_resumes_and_scancel_term_stops_with_last_ckpt(cluster, tmp_path, spy):
    env, _, calls = spy
    # scontrol requeue: SLURM stops the job (SIGTERM), the run writes last.ckpt, the job
    # comes back and finishes from it
    job, run_dir, jid = _training_job(tmp_path / "a", env)
    assert run(f"scontrol requeue {jid}", tmp_path).returncode == 0
    code, out, err = finish(job, 600)
    assert code == 0, err[-3000:]
    assert job_field(jid, "Restarts") == "1"
    assert weights(run_dir)[1] == PREEMPT_STEPS
    assert len(list((run_dir / "csv").iterdir())) == 2  # it resumed, not restarted
    # scancel --signal=TERM: a clean stop with last.ckpt; the job does not come back
    job, run_dir, jid = _training_job(tmp_path / "b", env)
    assert run(f"scancel --signal=TERM {jid}", tmp_path).returncode == 0
    code, out, err = finish(job, 300)  # the sweep hears of it (submitit's result file)
    assert code != 0 and "stopped by SIGTERM at step" in out + err
    stopped = weights(run_dir)[1]
    assert 0 < stopped < PREEMPT_STEPS and job_field(jid, "Restarts") == "0"
    assert requeues(calls) == []  # SIGTERM never makes hdsr or submitit requeue


# -- two nodes --------------------------------------------------------------------------


def test_two_nodes_train_as_ddp_sim_does(cluster, tmp_path):
    args = f"logger=csv trainer.max_steps=4 {QUICK} {TINY_NET}"
    nodes = (
        "launcher=slurm_node trainer=multi_node trainer.devices=1 trainer.accelerator=cpu "
        "hydra.launcher.nodes=2 hydra.launcher.gpus_per_node=0 hydra.launcher.cpus_per_task=1 "
        "hydra.launcher.mem_gb=1 hydra.launcher.timeout_min=10"
    )
    job = start(f"hdsr-train -m {nodes} {args}", tmp_path / "slurm")
    sim = run(f"hdsr-train -m trainer=ddp_sim {args}", tmp_path)
    assert sim.returncode == 0, sim.stderr[-3000:]
    code, out, err = finish(job, 600)
    assert code == 0, err[-3000:]
    sweep = tmp_path / "slurm" / "runs" / "sweep"
    run_dir = sweep / "hdsrnet_x2_s0"
    (jid,) = job_ids(sweep)
    logs = sorted(p.name for p in (sweep / ".submitit" / jid).glob("*_log.out"))
    assert logs == [f"{jid}_0_log.out", f"{jid}_1_log.out"]  # one task per node
    assert job_field(jid, "NodeList") == "n[1-2]"
    rank1 = (sweep / ".submitit" / jid / f"{jid}_1_log.out").read_text()
    assert "node=1(2), global_rank=1(2)" in rank1  # SLURM's second task, on the second node
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1  # is Lightning's rank 1
    sim_dir = tmp_path / "runs" / "sweep" / "hdsrnet_x2_s0"
    assert last_val(run_dir / "csv") == last_val(sim_dir / "csv")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    got, step = weights(run_dir)
    want, _ = weights(sim_dir)
    assert step == 4
    assert_same_weights(got, want)
    text = out + err + "".join(p.read_text() for p in (sweep / ".submitit" / jid).glob("*_log.*"))
    assert "sync_dist=True" not in text


def test_an_unreachable_rendezvous_fails_at_once_naming_it(cluster, tmp_path):
    nodes = (
        "launcher=slurm_node trainer=multi_node trainer.devices=1 trainer.accelerator=cpu "
        "hydra.launcher.nodes=2 hydra.launcher.gpus_per_node=0 hydra.launcher.cpus_per_task=1 "
        "hydra.launcher.mem_gb=1 hydra.launcher.timeout_min=5"
    )
    job = start(
        f"hdsr-train -m {nodes} logger=csv trainer.max_steps=2 {QUICK} {TINY_NET}",
        tmp_path,
        MASTER_ADDR="no-such-node.invalid",
    )
    code, out, err = finish(job, 300)
    assert code != 0
    (jid,) = job_ids(tmp_path / "runs" / "sweep")
    minutes, seconds = (job_field(jid, "RunTime") or "99:99:99").split(":")[-2:]
    assert int(minutes) * 60 + int(seconds) < 60  # from the job's start to its end
    assert "the DDP rendezvous address no-such-node.invalid:" in err
    assert "does not resolve" in err


# -- search workers ---------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_search_workers_in_a_job_array_survive_a_killed_worker(cluster, tmp_path):
    pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text(
        textwrap.dedent(
            """\
            study: tiny
            direction: maximize
            pruner: {kind: nop}
            sampler: {kind: tpe, seed: 0}
            params:
              optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
            overrides: [trainer.max_steps=150, checkpoint.every_n_train_steps=5]
            """
        )
    )
    journal = tmp_path / "study.journal"
    script = tmp_path / "search.sbatch"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --array=0-1 --cpus-per-task=1 --time=10
            #SBATCH --output={tmp_path}/worker_%a.out
            export PYTHONPATH={TESTS}
            srun {BIN}/hdsr-search {space} --trials 3 --storage {journal} -- \\
                trainer.accelerator=cpu logger=csv data.patches_per_epoch=64 {SMALL} {TINY_NET} \\
                {pace_overrides(0.1)}
            """
        )
    )
    submitted = run(f"sbatch --parsable {script}", tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    array = submitted.stdout.strip().split(";")[0]
    outs = [tmp_path / f"worker_{i}.out" for i in (0, 1)]

    optuna = pytest.importorskip("optuna")
    from hdsr.search.study import RETRY_OF, WORKER_PID

    def study():
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
        return optuna.load_study(study_name="tiny", storage=storage)

    def a_trial_is_training():
        """A RUNNING trial whose run has written a checkpoint: (trial, its worker's pid)."""
        if not journal.exists():
            return None
        try:
            running = study().get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # the journal is there, the study's record not yet
            return None
        for t in running:
            ckpt = tmp_path / "runs" / "search" / "tiny" / f"trial_{t.number}" / "checkpoints"
            if WORKER_PID in t.system_attrs and (ckpt / "last.ckpt").exists():
                return t.number, int(t.system_attrs[WORKER_PID])
        return None

    victim, pid = wait_for(a_trial_is_training, "a trial training", 300)
    # killed outright, as a lost node would be (scancel --signal=KILL gives a job step
    # SIGTERM and KillWait seconds first: the worker would requeue its trial itself)
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (
            not subprocess.run(
                ["squeue", "-h", "-j", array], capture_output=True, text=True
            ).stdout.strip()
        ),
        "end of both workers",
        600,
    )
    trials = study().get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3, [(t.number, t.state) for t in trials]  # exactly --trials
    killed = next(t for t in trials if t.number == victim)
    assert killed.state == optuna.trial.TrialState.FAIL  # requeued by the other worker
    (retry,) = [t for t in complete if t.user_attrs.get(RETRY_OF) == victim]
    assert retry.params == killed.params
    said = "".join(out.read_text() for out in outs)
    assert f"trial {victim} was left running by a worker that stopped: requeued" in said
    assert f"resumes trial {victim}" in said
