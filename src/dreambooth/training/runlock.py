"""One `dreambooth train` at a time per output folder.

A training run holds an exclusive lock (flock) on OUT/.train.lock while it writes there, with its
pid and command in the file. A second run into the same folder (a terminal and the web UI, two
sweeps) is refused before it touches anything, and anyone can ask who is training a folder now: the
UI shows such a run as training and can stop it (SIGINT to that pid: a checkpoint, then exit 130).
The lock goes with the process, however it ends (crash, kill -9, out of memory): nothing stale to
clear by hand. Where flock is missing (Windows) nothing is locked.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".train.lock"


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
