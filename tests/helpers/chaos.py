"""A chaos harness for exact resume: SIGKILLs from outside, at random moments of every phase.

    python -m tests.helpers.chaos --kills N [--seed S] [--jobs J] [--epochs E] [--out DIR]

runs the deterministic job of tests/helpers/resume_job.py once uninterrupted (the reference),
then N times with one SIGKILL each, sent by this process to a worker or to the launcher at a
moment drawn at random inside a phase of the job:

    before_join    a worker process exists and has not begun to join
    during_join    a worker began joining and has not heard the go signal
    first_epoch    from the go signal to the first backup
    mid_epoch      inside a later epoch's training
    backup_write   while a worker's backup is written (held open: tests/helpers/chaos_hooks.py)
    journal_write  while the coordinator writes and renames a journal entry (held open)
    commit         while the commit marker is written (held open)
    train_end      while a worker is in on_train_end (held open)
    launcher       the launcher itself, uniformly over the reference run's length

The schedule (phase, target, epoch, moment) is drawn from the seed and logged. A worker's
death must be cured by the job itself (``max_restarts``); after the launcher's, the harness
runs the job again with ``resume=True``. Each run is compared with the reference: History,
decisions, stopped and best epochs, final learning rates, every rank's weights digest, the
CSV's bytes, the best checkpoint's bytes, and the scalar series (run, tag, step, value)
TensorBoard reads back from the event files. Outcomes:

    identical      exit 0, everything equal
    loud           non-zero exit, with the error that names the cause
    SILENT         exit 0 with a difference: a bug (principle 9)
    hang           nothing happened for STALL_S (no process began, no phase began)
    missed         the phase never came (the job ended first): no kill

The recovery time of a kill is from the kill to a restarted worker training again (its
``joined`` event), the harness's relaunch included after a launcher kill.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tests.helpers.tensorboard_scalars import read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHASES = (
    "before_join",
    "during_join",
    "first_epoch",
    "mid_epoch",
    "backup_write",
    "journal_write",
    "commit",
    "train_end",
    "launcher",
)
EPOCHS = 8  # the chaos job's epochs (resume_job's chaos profile: a stop, LR cuts, a restore)
MAX_RESTARTS = 5  # up to three kills in an episode, and spares (a loaded machine)
HOLD_S = 0.6  # how long a held phase stays open
RUN_TIMEOUT_S = 240.0  # the reference run's limit
STALL_S = 150.0  # a run with no event (no process started, no phase begun) this long hangs
POLL_S = 0.01
COMPARED = (
    "epochs",
    "history",
    "decisions",
    "stopped_epoch",
    "best_epoch",
    "final",
    "final_lr",
    "csv",
    "ckpt",
    "tensorboard",
)


@dataclasses.dataclass(frozen=True)
class Kill:
    """One scheduled kill: where, whom, and when inside the phase's window (0..1)."""

    index: int
    phase: str
    target: str  # "rank0", "rank1" or "launcher"
    epoch: int | None
    rank: int  # whose events open the window
    moment: float

    def describe(self) -> str:
        at = "" if self.epoch is None else f" epoch {self.epoch}"
        return (
            f"#{self.index} {self.phase}{at} (rank {self.rank}) -> {self.target} "
            f"at {self.moment:.2f}"
        )


@dataclasses.dataclass
class Outcome:
    kill: Kill
    status: str  # identical, loud, SILENT, hang, missed
    detail: str = ""
    recovery_s: float | None = None
    wall_s: float = 0.0
    killed_in_window: bool | None = None


# ---------------------------------------------------------------------- the schedule

EARLY = ("before_join", "during_join", "first_epoch")
MIDDLE = ("mid_epoch", "backup_write", "journal_write", "commit")
LATE = ("train_end", "launcher")


def schedule(seed: int, kills: int, last_epoch: int) -> list[list[Kill]]:
    """`kills` kills in episodes of up to three, one run of the job each: a kill early in
    the job, one in the middle, one late. Phases go in turn within each group (every
    phase covered); targets, epochs and moments are drawn from `seed`."""
    rng = random.Random(seed)
    episodes: list[list[Kill]] = []
    index = 0
    while index < kills:
        n = len(episodes)
        phases = [EARLY[n % 3], MIDDLE[n % 4], LATE[n % 2]][: kills - index]
        episode = []
        for phase in phases:
            episode.append(_draw(rng, index, phase, last_epoch))
            index += 1
        episodes.append(episode)
    return episodes


def _draw(rng: random.Random, index: int, phase: str, last_epoch: int) -> Kill:
    rank = rng.randrange(2)
    worker, other = f"rank{rank}", f"rank{1 - rank}"
    epoch: int | None = None
    if phase in EARLY or phase == "train_end":
        target = rng.choice([worker, worker, other, "launcher"])
    elif phase == "mid_epoch":
        epoch = rng.randrange(1, max(2, last_epoch))
        target = rng.choice([worker, other, "launcher"])
    elif phase == "backup_write":
        epoch = rng.randrange(1, last_epoch + 1)
        target = rng.choice([worker, worker, other, "launcher"])
    elif phase in ("journal_write", "commit"):
        epoch = rng.randrange(1, last_epoch + 1)
        target = rng.choice(["launcher", "launcher", worker])
    else:
        target = "launcher"
    return Kill(index, phase, target, epoch, rank, rng.random())


# ---------------------------------------------------------------------- watching a run


class Watch:
    """The events of one run (its events file) and its worker processes (from /proc)."""

    def __init__(self, events_path: str, launcher_pid: int):
        self.path = events_path
        self.launcher_pid = launcher_pid
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self._seen: set[int] = set()

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            self.events.append(json.loads(line))
        now = time.time()
        for pid, rank, spare in children(self.launcher_pid):
            # Between fork and exec a child still shows its parent's environment: it is
            # counted once its own (with its rank) shows. A warm spare is not a worker
            # (it becomes one when given a rank, and its events say so then).
            if pid not in self._seen and rank is not None and not spare:
                self._seen.add(pid)
                self.events.append({"t": now, "pid": pid, "rank": rank, "event": "spawn"})

    def find(
        self, event: str, rank: int | None = None, epoch: int | None = None, after: float = 0.0
    ) -> dict[str, Any] | None:
        for item in self.events:
            if (
                item["event"] == event
                and item["t"] >= after
                and (rank is None or item.get("rank") == rank)
                and (epoch is None or item.get("epoch") == epoch)
            ):
                return item
        return None


def children(parent: int) -> list[tuple[int, int | None, bool]]:
    """(pid, DISTCB_RANK, is a warm spare) of the live child processes of `parent`.

    A warm spare (`distcb.launch.spare`) carries its rank's environment before it is
    given the rank, and keeps its command line after: it is told apart by that command
    line, and once given its rank by the events it marks (`_target_pid`)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent or fields[0] == "Z":
                continue
            with open(f"/proc/{name}/environ", "rb") as handle:
                env = dict(
                    item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item
                )
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                spare = b"distcb.launch.spare" in handle.read()
        except (OSError, IndexError, ValueError):
            continue
        rank = env.get(b"DISTCB_RANK")
        found.append((int(name), int(rank) if rank is not None and rank.isdigit() else None, spare))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------------- running the job


def environment(events: str | None, holds: list[dict[str, Any]] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("DISTCB_CHAOS", None)
    if events is not None:
        env["DISTCB_CHAOS"] = json.dumps({"events": events, "holds": holds or []})
    return env


def command(run_dir: str, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.helpers.resume_job",
        run_dir,
        "--epochs",
        str(epochs),
        "--max-restarts",
        str(MAX_RESTARTS),
        *extra,
    ]


def start(run_dir: str, epochs: int, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    log = open(os.path.join(run_dir + ".out"), "a")  # noqa: SIM115 (closed by the caller)
    return subprocess.Popen(
        command(run_dir, epochs, *extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )


def result_of(run_dir: str, output: str) -> dict[str, Any] | None:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return None
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result["csv"] = _read(os.path.join(run_dir, "log.csv"))
    ckpt = _read(os.path.join(run_dir, "best.weights.h5"))
    result["ckpt"] = None if ckpt is None else hashlib.sha256(ckpt.encode("latin-1")).hexdigest()
    result["tensorboard"] = read_scalars(os.path.join(run_dir, "tb"))
    reports = result.get("reports", {})
    result["final"] = {rank: r.get("weights_sha256") for rank, r in reports.items()}
    result["final_lr"] = {rank: r.get("learning_rate") for rank, r in reports.items()}
    return result


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("latin-1")
    except FileNotFoundError:
        return None


def differences(result: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    return [key for key in COMPARED if result.get(key) != reference.get(key)]


def cause(output: str) -> str:
    """The line of the output that names why the job failed ("" when none does)."""
    for line in reversed(output.splitlines()):
        text = line.strip()
        if ("Error" in text or "Exhausted" in text or "Exception" in text) and ":" in text:
            return text[:300]
    return ""


def run_reference(workdir: str, epochs: int) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """The uninterrupted run: its result, its events and its wall time."""
    run_dir = os.path.join(workdir, "reference")
    os.makedirs(run_dir)
    events = run_dir + ".events"
    began = time.time()
    process = start(run_dir, epochs, environment(events))
    watch = Watch(events, process.pid)
    while process.poll() is None:
        watch.poll()
        if time.time() - began > RUN_TIMEOUT_S:
            _kill_group(process)
            raise RuntimeError("the uninterrupted chaos job did not end in time")
        time.sleep(POLL_S)
    watch.poll()
    wall = time.time() - began
    output = _read(run_dir + ".out") or ""
    result = result_of(run_dir, output)
    if process.returncode != 0 or result is None:
        raise RuntimeError(f"the uninterrupted chaos job failed:\n{output[-3000:]}")
    for event in watch.events:
        event["t"] -= began
    return result, watch.events, wall


class Windows:
    """How long each phase lasted in the reference run (the window a kill moment scales)."""

    def __init__(self, events: list[dict[str, Any]], wall_s: float):
        self.events = events
        self.wall_s = wall_s

    def _t(self, event: str, rank: int | None = None, epoch: int | None = None) -> float:
        for item in self.events:
            if (
                item["event"] == event
                and (rank is None or item.get("rank") == rank)
                and (epoch is None or item.get("epoch") == epoch)
            ):
                return float(item["t"])
        raise KeyError(f"the reference run has no {event} event (rank {rank}, epoch {epoch})")

    def length(self, kill: Kill) -> float:
        r, e = kill.rank, kill.epoch
        if kill.phase == "before_join":
            return self._t("join_begin", r) - self._t("spawn", r)
        if kill.phase == "during_join":
            return self._t("joined", r) - self._t("join_begin", r)
        if kill.phase == "first_epoch":
            return self._t("backup_begin", r, 0) - self._t("joined", r)
        if kill.phase == "mid_epoch":
            return self._t("epoch_end", r, e) - self._t("epoch_begin", r, e)
        if kill.phase == "backup_write":
            return HOLD_S + self._t("backup_end", r, e) - self._t("backup_begin", r, e)
        if kill.phase == "journal_write":
            return HOLD_S + self._t("journal_end", None, e) - self._t("journal_begin", None, e)
        if kill.phase == "commit":
            return HOLD_S + self._t("commit_end", None, e) - self._t("commit_begin", None, e)
        if kill.phase == "train_end":
            return HOLD_S + self._t("train_end_done", r) - self._t("train_end_begin", r)
        # The launcher: anywhere in most of the training after the workers (re)joined.
        return 0.8 * (self._t("train_end_done", 1 - r) - self._t("joined", r))

    def last_epoch(self) -> int:
        return max(int(e["epoch"]) for e in self.events if e["event"] == "epoch_end")


OPENS = {
    "before_join": ("spawn", "join_begin"),
    "during_join": ("join_begin", "joined"),
    "first_epoch": ("joined", "backup_begin"),
    "mid_epoch": ("epoch_begin", "epoch_end"),
    "backup_write": ("backup_begin", "backup_end"),
    "journal_write": ("journal_begin", "journal_end"),
    "commit": ("commit_begin", "commit_end"),
    "train_end": ("train_end_begin", "train_end_done"),
}
HOLDS = {"backup_write": "backup", "journal_write": "journal", "commit": "commit"}


def _hold(kill: Kill) -> dict[str, Any] | None:
    """The hold that keeps `kill`'s phase open (tests/helpers/chaos_hooks.py), if it has one."""
    if kill.phase in HOLDS:
        rank = kill.rank if kill.phase == "backup_write" else None
        phase, epoch = HOLDS[kill.phase], kill.epoch
    elif kill.phase == "train_end":
        rank, phase, epoch = kill.rank, "train_end", None
    else:
        return None
    return {"id": kill.index, "phase": phase, "epoch": epoch, "rank": rank, "hold_s": HOLD_S}


def _window_events(kill: Kill) -> tuple[str, int | None, int | None]:
    """The event that opens `kill`'s window, and the rank and epoch it must carry."""
    first, _ = OPENS[kill.phase]
    rank = None if kill.phase in ("journal_write", "commit") else kill.rank
    epoch = None if kill.phase in EARLY or kill.phase == "train_end" else kill.epoch
    return first, rank, epoch


class _Run:
    """One run of the job (relaunched with resume=True after a launcher kill)."""

    def __init__(self, run_dir: str, epochs: int, holds: list[dict[str, Any]]):
        self.run_dir = run_dir
        self.epochs = epochs
        self.events = run_dir + ".events"
        self.began = time.time()
        self.process = start(run_dir, epochs, environment(self.events, holds))
        self.watch = Watch(self.events, self.process.pid)
        self.holds = holds
        self.worker_pids: set[int] = set()
        self.last_activity = self.began

    def poll(self) -> None:
        seen = len(self.watch.events)
        self.watch.poll()
        if len(self.watch.events) > seen:
            self.last_activity = time.time()
        self.worker_pids |= {e["pid"] for e in self.watch.events if e.get("rank") is not None}

    def stalled(self) -> bool:
        """Nothing happened for `STALL_S` (a loaded machine is slow, not stalled)."""
        return time.time() - self.last_activity > STALL_S

    def running(self) -> bool:
        return self.process.poll() is None and not self.stalled()

    def wait(self) -> None:
        """Until the launcher ends, or the run stalls."""
        while self.running():
            self.poll()
            time.sleep(0.2)

    def relaunch(self) -> None:
        """After the launcher's death: its workers end; the job runs again, resumed."""
        self.process.wait()
        for pid in self.worker_pids | {pid for pid, _, _ in children(self.process.pid)}:
            while alive(pid) and not self.stalled():
                time.sleep(POLL_S)
        self.process = start(
            self.run_dir, self.epochs, environment(self.events, self.holds), "--resume"
        )
        self.watch.launcher_pid = self.process.pid
        self.last_activity = time.time()


def run_episode(
    episode: list[Kill], workdir: str, epochs: int, windows: Windows, reference: dict[str, Any]
) -> list[Outcome]:
    """Run the job once, with the episode's kills in turn (each after the job recovered
    from the one before), then compare with the reference."""
    run_dir = os.path.join(workdir, f"run-{episode[0].index:04d}")
    os.makedirs(run_dir)
    holds = [h for h in (_hold(kill) for kill in episode) if h is not None]
    run = _Run(run_dir, epochs, holds)
    done: list[tuple[Kill, float, bool | None]] = []  # kill, when, inside its window
    armed_at = run.began
    try:
        for kill in episode:
            killed = _one_kill(run, kill, windows, armed_at)
            if killed is None:
                break
            done.append((kill, *killed))
            if kill.target == "launcher":
                run.relaunch()
            armed_at = _recovered(run, killed[0]) or time.time()
        run.wait()
        wall = time.time() - run.began
        if run.process.poll() is None:
            status, detail = "hang", f"nothing happened for {STALL_S:g} s"
        else:
            status, detail = _judge(run, reference)
        run.poll()
        outcomes = []
        for kill, at, inside in done:
            back = run.watch.find("joined", after=at)
            recovery = None if back is None else back["t"] - at
            outcomes.append(Outcome(kill, status, detail, recovery, wall, inside))
        for kill in episode[len(done) :]:
            outcomes.append(Outcome(kill, "missed", "the phase never came", wall_s=wall))
        return outcomes
    finally:
        if run.process.poll() is None:
            _kill_group(run.process)


def _one_kill(
    run: _Run, kill: Kill, windows: Windows, armed_at: float
) -> tuple[float, bool | None] | None:
    """Wait for `kill`'s window, SIGKILL its target at its moment; (when, whether the
    window was still open), or None when the window never came."""
    hold = _hold(kill)
    if hold is not None:
        with open(f"{run.events}.hold-{hold['id']}.armed", "w"):
            pass
    window = max(0.0, windows.length(kill))
    opened: dict[str, Any] | None = None
    due: float | None = armed_at + kill.moment * window if kill.phase == "launcher" else None
    while run.running():
        run.poll()
        if due is None:
            event, rank, epoch = _window_events(kill)
            opened = run.watch.find(event, rank, epoch, after=armed_at)
            if opened is not None:
                due = opened["t"] + kill.moment * window
        if due is not None and time.time() >= due:
            pid = _target_pid(kill, run.process.pid, run.watch)
            if pid is None:
                return None
            os.kill(pid, signal.SIGKILL)
            at = time.time()
            inside: bool | None = None
            if opened is not None:
                run.poll()
                _, last = OPENS[kill.phase]
                _, rank, epoch = _window_events(kill)
                inside = run.watch.find(last, rank, epoch, after=opened["t"]) is None
            return at, inside
        time.sleep(POLL_S)
    return None


def _recovered(run: _Run, killed_at: float) -> float | None:
    """When a restarted worker joined after the kill (None: the job ended first)."""
    while run.running():
        run.poll()
        back = run.watch.find("joined", after=killed_at)
        if back is not None:
            return float(back["t"])
        time.sleep(POLL_S)
    return None


def _judge(run: _Run, reference: dict[str, Any]) -> tuple[str, str]:
    output = _read(run.run_dir + ".out") or ""
    if run.process.returncode != 0:
        why = cause(output)
        return ("loud", why) if why else ("LOUD-UNNAMED", output[-500:])
    result = result_of(run.run_dir, output)
    if result is None:
        return "SILENT", "exit 0 without a result"
    diff = differences(result, reference)
    if diff:
        return "SILENT", f"differs: {', '.join(diff)}"
    return "identical", ""


def _target_pid(kill: Kill, launcher: int, watch: Watch) -> int | None:
    """The launcher, or the process that is rank r's worker now: a child started as one,
    or a warm spare that was given rank r (it marked an event as rank r); never a spare
    still waiting (killing one is a different failure: tests/launch/test_warm_spares.py)."""
    if kill.target == "launcher":
        return launcher
    rank = int(kill.target[-1])
    marked = {e["pid"]: e["t"] for e in watch.events if e.get("rank") == rank}
    live = [
        pid for pid, r, spare in children(launcher) if r == rank and (not spare or pid in marked)
    ]
    # The newest: the one that marked an event last (one just started marked none yet).
    live.sort(key=lambda pid: marked.get(pid, float("inf")))
    return live[-1] if live else None


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# ---------------------------------------------------------------------- the whole campaign


@dataclasses.dataclass
class Campaign:
    reference: dict[str, Any]
    reference_wall_s: float
    outcomes: list[Outcome]
    wall_s: float


def campaign(
    kills: int,
    *,
    seed: int,
    jobs: int,
    workdir: str,
    epochs: int = EPOCHS,
    log: Callable[[str], None] = print,
) -> Campaign:
    """The reference run, then `kills` killed runs, `jobs` at a time."""
    began = time.time()
    reference, events, reference_wall = run_reference(workdir, epochs)
    log(f"reference: {reference_wall:.1f} s, epochs {reference['epochs']}")
    windows = Windows(events, reference_wall)
    plan = schedule(seed, kills, windows.last_epoch())
    for episode in plan:
        log("schedule: " + " | ".join(kill.describe() for kill in episode))
    outcomes: list[Outcome] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(run_episode, episode, workdir, epochs, windows, reference)
            for episode in plan
        ]
        for future in concurrent.futures.as_completed(futures):
            for outcome in future.result():
                outcomes.append(outcome)
                recovery = (
                    "" if outcome.recovery_s is None else f", back in {outcome.recovery_s:.1f} s"
                )
                where = "" if outcome.killed_in_window in (None, True) else " (after its window)"
                log(
                    f"{outcome.kill.describe()}{where}: {outcome.status}{recovery}"
                    + (f" ({outcome.detail})" if outcome.detail else "")
                )
    outcomes.sort(key=lambda o: o.kill.index)
    return Campaign(reference, reference_wall, outcomes, time.time() - began)


def table(outcomes: list[Outcome]) -> str:
    """Per phase: kills, identical, loud (with causes), silent differences, hangs, misses,
    and the median and worst recovery time."""
    rows = [
        "| phase | kills | identical | loud failures (cause) | silent diffs | hangs | missed "
        "| recovery median / max (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in PHASES:
        mine = [o for o in outcomes if o.kill.phase == phase]
        if not mine:
            continue
        count = {s: sum(o.status == s for o in mine) for s in ("identical", "SILENT", "hang")}
        loud = [o for o in mine if o.status in ("loud", "LOUD-UNNAMED")]
        causes = sorted({o.detail.split(":")[0][:60] for o in loud})
        times = [o.recovery_s for o in mine if o.recovery_s is not None]
        recovery = f"{statistics.median(times):.1f} / {max(times):.1f}" if times else "-"
        rows.append(
            f"| {phase} | {len(mine)} | {count['identical']} of {len(mine)} | {len(loud)}"
            + (f" ({'; '.join(causes)})" if causes else "")
            + f" | {count['SILENT']} | {count['hang']} "
            f"| {sum(o.status == 'missed' for o in mine)} | {recovery} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temp dir)")
    options = parser.parse_args(argv)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"chaos: {options.kills} kills, seed {seed}, {options.jobs} at a time", flush=True)
    with tempfile.TemporaryDirectory(prefix="distcb-chaos-") as tmp:
        workdir = options.out or tmp
        os.makedirs(workdir, exist_ok=True)
        done = campaign(
            options.kills,
            seed=seed,
            jobs=options.jobs,
            workdir=workdir,
            epochs=options.epochs,
            log=lambda text: print(text, flush=True),
        )
    print()
    print(table(done.outcomes))
    bad = [o for o in done.outcomes if o.status in ("SILENT", "hang", "LOUD-UNNAMED")]
    print(
        f"\n{len(done.outcomes)} kills in {done.wall_s:.0f} s (reference run "
        f"{done.reference_wall_s:.1f} s, seed {seed}): "
        f"{sum(o.status == 'identical' for o in done.outcomes)} identical, "
        f"{sum(o.status == 'loud' for o in done.outcomes)} loud, {len(bad)} bad"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
