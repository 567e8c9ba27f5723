"""--local-files-only never touches the network (issue 8): run in a process whose sockets refuse to
connect and record every attempt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SITECUSTOMIZE = """
import os, socket
_log = os.environ["NETWORK_LOG"]
def _refuse(*args, **kwargs):
    with open(_log, "a") as f:
        f.write(repr(args[:2]) + "\\n")
    raise OSError("network blocked by the test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]),
        NETWORK_LOG=str(tmp_path / "network.log"),
        TRANSFORMERS_VERBOSITY="error",
        HF_HOME=str(tmp_path / "hf"),  # an empty hub cache
    )
    return subprocess.run(
        [sys.executable, "-m", "dreambooth", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_a_hub_id_not_in_the_cache_is_one_line_without_a_network_request(tmp_path):
    out = tmp_path / "out"
    proc = _run(tmp_path, "generate", "--model", "someone/some-model", "--prompt", "a cat", "--output-dir", str(out),
                "--local-files-only")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert (
        line.startswith("error: --model someone/some-model: not in the local hub cache")
        and "--local-files-only" in line
    )
    assert not (tmp_path / "network.log").exists() and not out.exists()


def test_local_model_and_extractor_folders_work_with_the_network_off(tmp_path, tiny_model):
    out = tmp_path / "out"
    proc = _run(tmp_path, "generate", "--model", str(tiny_model), "--prompt", "a cat", "--steps", "2",
                "--num-images", "1", "--output-dir", str(out), "--local-files-only")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.glob("*.png"))) == 1
    # an extractor given as a hub id that is not cached: one line, no request
    proc = _run(tmp_path, "evaluate", "--generated", str(out), "--real", str(out), "--dino-model",
                "facebook/dino-vits16", "--local-files-only")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --dino-model facebook/dino-vits16")
    assert not (tmp_path / "network.log").exists()
