"""Training runs (and their scoring) started from the page, each as its own `dreambooth` process.

The UI talks to training only through the config file it writes, the process it starts and the files
the run writes: a run that crashes, is killed or runs out of memory ends its own process, never the
page. Stopping sends the process SIGINT, as Ctrl-C does: training finishes its step, saves a
checkpoint and exits (130); resuming starts `dreambooth train --config ... --resume latest`.

Each started process is recorded in RUN/ui-process.json (pid and command), so a UI started again
still sees, and can stop, a run that an earlier UI started. A `dreambooth train` started outside any UI
is found by the lock it holds on its folder (dreambooth.runs): shown as started outside, stoppable
the same way, and left running when the UI stops. `dreambooth select` (scoring a run's
checkpoints) is supervised the same way by a second Supervisor (RUN/select.log, RUN/ui-select.json).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import children, io, runs
from ..errors import UserError
from .projects import LOG, OUTSIDE, PROCESS_FILE, UI_CONFIG, active


@dataclass
class Job:
    proc: subprocess.Popen | None  # None: started by an earlier UI or outside any UI (known by its pid only)
    pid: int
    stopping: bool = False
    outside: bool = False  # a `dreambooth train` no UI started (found holding the run's lock)


def _alive(pid: int, command: str = "train") -> bool:
    """A process with this pid runs and is a dreambooth `command` (pids are reused)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    if any(b"defunct" in part for part in cmdline) or not cmdline or cmdline == [b""]:
        return False
    return b"dreambooth" in b" ".join(cmdline) and command.encode() in cmdline


class Supervisor:
    """One process at a time per run, of one command: `train` (from RUN/ui-train.yaml) or `select`."""

    def __init__(self, env: dict[str, str] | None = None, command: str = "train"):
        self.command = command
        self.log_name = LOG if command == "train" else f"{command}.log"
        self.process_file = PROCESS_FILE if command == "train" else f"ui-{command}.json"
        self.jobs: dict[Path, Job] = {}
        self.ended: dict[Path, str] = {}  # run -> what its last process ended as (this UI's)
        self.env = env
        self.lock = threading.RLock()  # the page's events run in threads

    def start(self, run: Path, resume: bool = False, args: list[str] | None = None) -> None:
        """Start the command on the run: training from its ui-train.yaml (with --resume latest to
        continue it), or `select` with `args`."""
        run = Path(run)
        if self.command == "train":
            config = run / UI_CONFIG
            if not config.is_file():
                raise UserError(f"run {run.name}: was not started from the UI (no {UI_CONFIG}); train it with the CLI")
            args = ["--config", str(config)] + (["--resume", "latest"] if resume else [])
        with self.lock:
            if active(self.state(run)):
                raise UserError(
                    f"run {run.name}: is {'training' if self.command == 'train' else 'being scored'} already"
                )
            command = [self.command, *(args or [])]
            shown = " ".join(a if a != str(run / UI_CONFIG) else UI_CONFIG for a in command)
            with open(run / self.log_name, "a", encoding="utf-8") as log:
                log.write(f"\n$ dreambooth {shown}\n")
            env = dict(self.env if self.env is not None else os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            # Its own session: the UI's Ctrl-C reaches it through stop_all(), once.
            proc = children.start(command, env=env, log=run / self.log_name, cwd=str(run), stdin=subprocess.DEVNULL)
            self.jobs[run] = Job(proc, proc.pid)
            self.ended.pop(run, None)
            io.write_text(
                run / self.process_file,
                json.dumps({"pid": proc.pid, "started": time.time(), "argv": children.argv(command)}, indent=2),
            )

    def _job(self, run: Path) -> Job | None:
        job = self.jobs.get(run)
        if job is None and (run / self.process_file).is_file():
            try:
                pid = int(json.loads((run / self.process_file).read_text())["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            if _alive(pid, self.command):
                job = self.jobs[run] = Job(None, pid)
        if job is None and self.command == "train":
            info = runs.holder(run)
            if info and isinstance(info.get("pid"), int):
                job = self.jobs[run] = Job(None, info["pid"], outside=True)
        return job

    def _running(self, run: Path, job: Job) -> bool:
        if job.outside:
            return (runs.holder(run) or {}).get("pid") == job.pid
        return _alive(job.pid, self.command)

    def state(self, run: Path) -> str | None:
        """'training', 'training (started outside this UI)', 'stopping', 'stopped', 'finished',
        'failed (exit N): why', or None (no process of this UI's, none running); see active()."""
        with self.lock:
            return self._state(Path(run))

    def _state(self, run: Path) -> str | None:
        job = self._job(run)
        if job is None:
            return self.ended.get(run)
        code = job.proc.poll() if job.proc is not None else (None if self._running(run, job) else 0)
        if code is None:
            return "stopping" if job.stopping else OUTSIDE if job.outside else "training"
        del self.jobs[run]
        if job.proc is None:
            self.ended[run] = None  # not ours: its files tell how it ended
            return None
        if code == 0:
            self.ended[run] = "finished"
        elif children.exit_code(code) == children.INTERRUPTED or job.stopping:  # 130, or killed by SIGINT
            self.ended[run] = "stopped"
        else:
            self.ended[run] = f"failed (exit {code}): {children.last_error_line(run / self.log_name)}"
        return self.ended[run]

    def stop(self, run: Path) -> None:
        """Ask the run to stop after its step, with a checkpoint (SIGINT, as Ctrl-C)."""
        run = Path(run)
        with self.lock:
            if not active(self.state(run)):
                raise UserError(f"run {run.name}: is not training")
            job = self.jobs[run]
            job.stopping = True
            try:
                os.kill(job.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def running(self) -> list[Path]:
        """The runs started by a UI (this one or an earlier one) that run now; not those started outside."""
        with self.lock:
            return [run for run in list(self.jobs) if active(self.state(run)) and not self.jobs[run].outside]

    def stop_all(self, wait: float = 120.0) -> None:
        """Stop every run a UI started (each saves a checkpoint), waiting up to `wait` seconds."""
        for run in self.running():
            try:
                self.stop(run)
            except UserError:
                pass
        deadline = time.monotonic() + wait
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
