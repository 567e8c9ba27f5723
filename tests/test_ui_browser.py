"""The web UI end to end in a real browser (issue 10): `dreambooth ui` runs as its own process on the
tiny model, and headless Chromium (Debian's, driven by Playwright) uses the page as a person would."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DREAMBOOTH_TEST_CHROMIUM", "/usr/bin/chromium")
WAIT = 90_000  # ms: the tiny model on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tiny_model, tmp_path_factory):
    """`dreambooth ui` on the tiny model, in its own process; yields (url, projects folder)."""
    projects = tmp_path_factory.mktemp("ui") / "projects"
    port = _free_port()
    log = open(projects.parent / "ui.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreambooth", "ui", "--projects", str(projects), "--model", str(tiny_model)]
        + ["--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise AssertionError(f"the UI did not start:\n{(projects.parent / 'ui.log').read_text()}") from None
            time.sleep(0.3)
    yield url, projects
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: running trainings stop with a checkpoint
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's (apt install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, ui):
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT)
    page.goto(ui[0])
    page.wait_for_selector("#gen-prompt textarea")
    yield page
    page.close()


def set_number(page, elem_id: str, value) -> None:
    """A slider's or number box's value, typed as a person would (then Tab, which commits it)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def number(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input[type=number]").input_value()


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_generate_shows_images_with_their_settings_and_sends_them_back_to_the_form(page, ui):
    from playwright.sync_api import expect

    _, projects = ui
    page.locator("#gen-prompt textarea").fill("a photo of sks dog")
    set_number(page, "gen-guidance", 5)
    set_number(page, "gen-steps", 3)
    set_number(page, "gen-n", 2)
    set_number(page, "gen-seed", 7)
    page.click("#gen-button")
    thumbs = page.locator("#gen-gallery .thumbnail-item")
    expect(thumbs).to_have_count(2)
    info = page.locator("#gen-info textarea")
    expect(info).to_have_value(re.compile("Seed: 7,"))
    text = info.input_value()
    assert "a photo of sks dog" in text and "CFG scale: 5.0" in text and "Steps: 3" in text, text

    # The files carry the same settings
    sidecars = sorted((projects / "outputs").glob("*.json"))
    written = [json.loads(p.read_text()) for p in sidecars]
    assert [(s["seed"], s["guidance"], s["steps"]) for s in written] == [(7, 5.0, 3), (8, 5.0, 3)]

    # Seed buttons
    page.click("#gen-random")
    expect(page.locator("#gen-seed input")).to_have_value("-1")
    page.click("#gen-reuse")
    expect(page.locator("#gen-seed input")).to_have_value("7")

    # Any image back into the form: the second one (seed 8), after the form was changed
    thumbs.nth(1).click()
    expect(info).to_have_value(re.compile("Seed: 8,"))
    set_number(page, "gen-guidance", 9)
    page.locator("#gen-prompt textarea").fill("something else")
    page.click("#gen-send")
    expect(page.locator("#gen-seed input")).to_have_value("8")
    expect(page.locator("#gen-prompt textarea")).to_have_value("a photo of sks dog")
    assert float(number(page, "gen-guidance")) == 5.0 and int(number(page, "gen-steps")) == 3
