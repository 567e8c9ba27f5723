"""One `dreambooth train` at a time per output folder: a second run into a folder being trained is
refused before it touches anything, and the lock goes with its process however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dreambooth import runs as runlock
from dreambooth.errors import UserError


def test_a_held_folder_names_its_holder_and_refuses_a_second_run(tmp_path):
    out = tmp_path / "run"
    assert runlock.holder(out) is None  # no folder yet
    with runlock.hold(out):
        info = runlock.holder(out)
        assert info["pid"] == os.getpid() and info["argv"] == sys.argv
        with pytest.raises(
            UserError, match=rf"^--output-dir {out}: dreambooth train \(pid {os.getpid()}\) is training"
        ):
            with runlock.hold(out):
                pass
        assert runlock.holder(out)["pid"] == os.getpid()  # the refused one took nothing away
    assert runlock.holder(out) is None
    with runlock.hold(out):  # free again
        pass


def test_the_lock_goes_with_a_killed_process(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys, time; from dreambooth import runs as runlock\n"
        f"with runlock.hold({str(out)!r}):\n    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert runlock.holder(out)["pid"] == proc.pid
        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            with runlock.hold(out):
                pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while runlock.holder(out) is not None:  # the kernel drops it with the process
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with runlock.hold(out):
        pass


def test_training_refuses_a_folder_another_run_trains_into(make_cfg, tmp_path):
    from dreambooth.training.loop import train
    from dreambooth.training.preflight import preflight

    cfg = make_cfg(max_steps=1)
    out = tmp_path / "run"
    assert cfg.output_dir == str(out)
    with runlock.hold(out):
        (out / "keep.txt").write_text("mine")
        for attempt in (preflight, train):
            with pytest.raises(UserError, match="is training into it now"):
                attempt(cfg)
        assert sorted(p.name for p in out.iterdir()) == [".train.lock", "keep.txt"]  # nothing written
