"""Child processes of `python -m dreambooth ...`: how multi-process training, the sweep and the UI start
them, pass them Ctrl-C and read how they ended, so that the three agree.

A child starts in a session of its own: Ctrl-C at the terminal (SIGINT to the foreground process group)
then reaches this process only, which passes it on once (forward_signals), where a child in the same
group would get it twice, once from the terminal and once forwarded; the UI's runs also outlive the
terminal the UI was started from. Imports nothing of the package, so any module can use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

# What a child stopped by Ctrl-C ends with, as `exit_code` gives it: 128 + SIGINT, the number a shell
# reports and the one `dreambooth` exits with after saving a checkpoint on Ctrl-C.
INTERRUPTED = 128 + signal.SIGINT


def argv(args: Sequence[str]) -> list[str]:
    """The command line of `dreambooth ARGS` run by this interpreter (a `dreambooth` on PATH may belong
    to another environment)."""
    return [sys.executable, "-m", "dreambooth", *args]


def env_sharing_cores(n: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (os.environ by default) in which each of n children running at once gets an
    equal share of the CPU cores (OMP_NUM_THREADS), unless the variable is set: n torch processes that
    each use every core slow each other down."""
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    return env


def start(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | str | None = None,
    cwd: Path | str | None = None,
    stdin: int | None = None,
    new_session: bool = True,
) -> subprocess.Popen:
    """Start `dreambooth ARGS` (env: os.environ when None). With `log`, its output and errors are
    appended to that file (its folder created); without, it writes where this process writes.
    new_session: see the module's docstring; the child gets signals through forward_signals or os.kill."""
    popen = dict(env=env, cwd=cwd, stdin=stdin, start_new_session=new_session)
    if log is None:
        return subprocess.Popen(argv(args), **popen)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    # The child writes through its own copy of the descriptor, so ours is closed once it has started.
    with open(log, "a", encoding="utf-8") as handle:
        return subprocess.Popen(argv(args), stdout=handle, stderr=subprocess.STDOUT, **popen)


class Forwarding:
    """What forward_signals saw: `signal` is the last signal received in the block (None: none), which
    tells the caller to start no more children and that the command was interrupted."""

    signal: int | None = None


@contextlib.contextmanager
def forward_signals(children: Callable[[], Iterable[subprocess.Popen]]) -> Iterator[Forwarding]:
    """While the block runs, SIGINT and SIGTERM sent to this process go to every child of `children()`
    (asked at each signal, so children started in the block are included) that still runs, and are
    recorded; the handlers from before are restored after. Children of their own session get Ctrl-C
    only this way, once. Call it from the main thread (signal handlers are set there only)."""
    received = Forwarding()

    def forward(signum, frame):
        received.signal = signum
        for proc in children():
            if proc.poll() is None:
                proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def exit_code(returncode: int) -> int:
    """The exit code a shell reports for a child that ended with this Popen returncode: the code itself,
    or 128 + N for a child killed by signal N (returncode -N)."""
    return returncode if returncode >= 0 else 128 - returncode


def last_error_line(path: Path) -> str:
    """What a failed run's log says went wrong: its error line, else its last line that is no progress bar."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith(("error:", "interrupted:")) or re.match(r"^\w+(Error|Exception)\b", ln)]
    rest = [ln for ln in lines if not re.search(r"\d+/\d+ \[|it/s|s/it|step/s", ln)]
    return (said or rest or lines or [""])[-1][:300]
