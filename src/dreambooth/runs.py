"""A run folder's layout, in one place: training writes through this module and everything else
(select, sweep, compare, grid, the UI) reads through it, so nothing needs the trainer to read a folder.

    OUT/config.yaml            the fully resolved config
    OUT/run.json               {"status": "training" | "finished", "step", "files", "unsaved"}
    OUT/checkpoints/step-N/    a resumable checkpoint; complete only with checkpoint_complete
    OUT/ema/                   with --ema-decay: the moving average's weights (also in checkpoints)
    OUT/.train.lock            held (flock) by the process training into OUT now

One `dreambooth train` at a time per output folder: a training run holds an exclusive lock on
.train.lock while it writes there, with its pid and command in the file. A second run into the same
folder (a terminal and the web UI, two sweeps) is refused before it touches anything, and anyone can
ask who is training a folder now: the UI shows such a run as training and can stop it (SIGINT to that
pid: a checkpoint, then exit 130). The lock goes with the process, however it ends (crash, kill -9,
out of memory): nothing stale to clear by hand. Where flock is missing (Windows) nothing is locked.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
MARKER = "checkpoint_complete"
EMA_DIR = "ema"  # the EMA weights, in the same layout as the raw ones, in this subfolder
LOCK_FILE = ".train.lock"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def read_status(run: str | Path) -> dict:
    """run.json's contents ({} when there is none or it cannot be read)."""
    try:
        status = json.loads((Path(run) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def run_status(output_dir: str | Path) -> str | None:
    """'finished', 'unfinished' (complete checkpoints but no final weights) or None (no run)."""
    if read_status(output_dir).get("status") == "finished":
        return "finished"
    return "unfinished" if list_checkpoints(output_dir) else None


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def checkpoint_step(path: str | Path) -> int:
    return int(json.loads((Path(path) / "state.json").read_text())["step"])


# -- the lock ------------------------------------------------------------------------------------------

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _read(f) -> dict:
    try:
        f.seek(0)
        info = json.loads(f.read() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def holder(output_dir: str | Path) -> dict | None:
    """What the process training into this folder now wrote about itself ({"pid", "argv", "started"};
    at least {} while it is writing it), or None when no run holds the folder."""
    path = Path(output_dir) / LOCK_FILE
    if fcntl is None:
        return None
    try:
        f = open(path, encoding="utf-8")
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(f)
        except OSError:
            return None
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def busy_message(output_dir: str | Path, info: dict) -> str:
    pid = info.get("pid")
    who = f"dreambooth train (pid {pid})" if pid else "another dreambooth train"
    return f"--output-dir {output_dir}: {who} is training into it now; wait for it to end or stop it (Ctrl-C)"


@contextmanager
def hold(output_dir: str | Path):
    """Hold the folder's lock for the block (creating the folder); UserError if another run holds it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    f = open(out / LOCK_FILE, "a+", encoding="utf-8")
    try:
        for attempt in range(10):  # a moment's shared lock is someone asking holder(), not a run
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    raise UserError(busy_message(out, _read(f))) from None
                time.sleep(0.05)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv, "started": time.time()}))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()
