"""What the page's tabs share: their events' base (Gradio and the backend), what an action says, a log's tail."""

import os
from pathlib import Path

from ..errors import UserError
from .backend import Backend


class TabEvents:
    """A tab's events: methods that take and return the page's values and call the backend.

    Gradio comes in as `gr` (imported when the page is built, not when this module is)."""

    def __init__(self, gr, backend: Backend):
        self.gr = gr
        self.backend = backend

    def refused(self, e: UserError) -> Exception:
        """The error Gradio shows in the page for a UserError."""
        return self.gr.Error(str(e))


def said(action, done: str) -> str:
    """What the page says after an action: `done`, or the UserError's line."""
    try:
        action()
    except UserError as e:
        return f"⚠️ {e}"
    return done


def tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log (of its last 8 KiB), blank ones dropped; "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p for p in text.replace("\r", "\n").splitlines() if p.strip()]
    return "\n".join(parts[-lines:])
