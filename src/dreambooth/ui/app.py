"""`dreambooth ui`: a local web page for the whole workflow (Gradio, as the field's web UIs are).

    dreambooth ui [--port 7860] [--projects ./dreambooth-projects] [--model M] [--host H] [--share] [--auth U:P]

Tabs: Generate (every setting, a run and its checkpoint, images with their settings, any image back into
the form), Grid (X/Y over any setting, filled in as it is generated), Train (a new run's photos and
settings; its progress, loss and validation images while it trains; stop with a checkpoint, resume) and
Evaluate (a run's `dreambooth select` table, plots and recommendation).

The page reaches files only through ui.projects.Projects (nothing outside the projects folder) and
training only through the config it writes and the process it starts (ui.supervisor).
"""

import logging
import os
import sys
import threading
from pathlib import Path

from ..config import UIConfig
from ..errors import UserError
from .backend import Backend
from .projects import MAX_UPLOAD_BYTES, Projects
from .supervisor import Supervisor

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth: give user:password (both non-empty)")
    return user, password


def exposure_warning(host: str, share: bool, auth: tuple | None) -> str | None:
    """What to print when the page is reachable from other machines."""
    where = []
    if host not in LOOPBACK:
        where.append(f"every machine that can reach {host}")
    if share:
        where.append("anyone with the public gradio.live link")
    if not where:
        return None
    return (
        f"warning: the UI is open to {' and '.join(where)}: they can generate and train on this machine and "
        "read the projects folder" + ("" if auth else "; add --auth user:password")
    )


def run_ui(cfg: UIConfig, block: bool = True):
    """Start the UI; with block, serve until Ctrl-C (which stops running trainings with a checkpoint)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own requests to itself
    auth = parse_auth(cfg.auth)
    if not 0 < cfg.port < 65536:
        raise UserError(f"--port: must be 1-65535, got {cfg.port}")
    root = Path(cfg.projects).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"--projects {root}: is a file, not a folder")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("ui: needs Gradio: pip install 'dreambooth[ui]'") from None
    root.mkdir(parents=True, exist_ok=True)
    projects = Projects(root)
    backend = Backend(projects, cfg.model, Supervisor(), cfg.dtype)
    warning = exposure_warning(cfg.host, cfg.share, auth)
    if warning:
        print(warning, file=sys.stderr)
    from .page import build_app, theme

    app = build_app(backend)
    app.queue(default_concurrency_limit=None)
    try:
        app.launch(
            server_name=cfg.host,
            server_port=cfg.port,
            share=cfg.share,
            auth=auth,
            max_file_size=MAX_UPLOAD_BYTES,
            allowed_paths=[str(projects.root)],
            theme=theme(),
            prevent_thread_lock=True,
            quiet=True,
            show_error=True,
        )
    except OSError as e:  # Gradio's "Cannot find empty port", or an address this machine does not have
        raise UserError(
            f"--port {cfg.port} / --host {cfg.host}: cannot listen there ({str(e).split('.')[0]})"
        ) from None
    print(
        f"dreambooth ui: http://{'127.0.0.1' if cfg.host == '0.0.0.0' else cfg.host}:{cfg.port} (projects: {projects.root})"
    )
    if not block:
        return app, backend
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        running = backend.supervisor.running()
        if running:
            print(f"stopping {len(running)} training run(s) with a checkpoint...", file=sys.stderr)
        backend.scoring.stop_all(wait=10)
        backend.supervisor.stop_all()
        app.close()
        raise
    return app, backend
