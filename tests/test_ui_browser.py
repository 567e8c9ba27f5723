"""The web UI end to end in a real browser (issue 10): `dreambooth ui` runs as its own process on the
tiny model, and headless Chromium (Debian's, driven by Playwright) uses the page as a person would."""

from __future__ import annotations

import json
import os
import re
import shutil
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
        # SIGINT as at a terminal: a pytest-xdist worker ignores it, and a child would inherit that, so the
        # teardown's Ctrl-C below would be ignored and the UI killed after 60 s instead of stopping
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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
        raise AssertionError("the UI did not stop within 60 s of SIGINT (Ctrl-C)") from None
    finally:
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
    box = page.locator(f"#{elem_id} input")
    box.click()
    listbox = box.get_attribute("aria-controls")
    page.locator(f"#{listbox}").get_by_role("option", name=option, exact=True).click()


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


def fill(page, elem_id: str, text: str) -> None:
    """A text box's value, typed, then checked: a box that mounts late (an accordion's) can otherwise
    take the keystrokes before its own initial value lands over them."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} :is(textarea, input)").first
    expect(box).to_be_visible()
    box.fill(text)
    expect(box).to_have_value(text)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_train_from_the_page_shows_progress_stops_with_a_checkpoint_and_resumes(page, ui, tmp_path):
    from playwright.sync_api import expect

    from dreambooth.demo import example_subject

    _, projects = ui
    photos = sorted(str(p) for p in example_subject().iterdir() if p.suffix in (".jpg", ".png"))
    tab(page, "Train")
    message = page.locator("#train-message")

    # Bad input gets a message in the page, and nothing is started or written
    fill(page, "train-name", "../evil")
    fill(page, "train-class", "dog")
    page.locator("#train-photos input[type=file]").set_input_files(photos)
    page.click("#train-start")
    expect(message).to_contain_text("run name '../evil'")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    page.reload()
    page.wait_for_selector("#gen-prompt textarea")
    tab(page, "Train")
    fill(page, "train-name", "mydog")
    fill(page, "train-class", "dog")
    page.locator("#train-photos input[type=file]").set_input_files([photos[0], str(broken)])
    page.click("#train-start")
    expect(message).to_contain_text("photo broken.png:")
    assert not (projects / "mydog").exists() and not (projects.parent / "evil").exists()

    # A real run: the class noun fills the prompts; progress, loss and validation images appear
    page.reload()
    page.wait_for_selector("#gen-prompt textarea")
    tab(page, "Train")
    fill(page, "train-name", "mydog")
    page.locator("#train-photos input[type=file]").set_input_files(photos)
    fill(page, "train-class", "dog")
    expect(page.locator("#train-instance-prompt :is(textarea, input)").first).to_have_value("a photo of sks dog")
    set_number(page, "train-steps", 150)
    set_number(page, "train-lr", 0.001)
    page.locator("#train-prior input[type=checkbox]").uncheck()
    page.get_by_text("More").click()
    set_number(page, "train-res", 64)
    set_number(page, "train-every", 50)
    page.click("#train-start")
    expect(message).to_contain_text("started mydog")
    status = page.locator("#run-status")
    expect(status).to_contain_text("mydog: training")
    expect(page.locator("#run-validation .thumbnail-item").first).to_be_visible()  # step 0's
    expect(page.locator("#run-loss img")).to_be_visible()

    page.click("#run-stop")
    expect(status).to_contain_text("mydog: stopped")
    run = projects / "mydog"
    stopped_at = sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step-*"))
    assert stopped_at and stopped_at[-1] < 150, stopped_at

    page.click("#run-resume")
    expect(status).to_contain_text("mydog: finished")
    expect(status).to_contain_text("step 150/150")
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert "--resume latest" in (run / "train.log").read_text()
    expect(page.locator("#run-validation .thumbnail-item")).to_have_count(2)  # the last step's two seeds


@pytest.fixture(scope="module")
def scored_run(ui, lora_with_te, extractors) -> str:
    """A LoRA run in the projects folder (checkpoints at steps 2 and 4), and the tiny DINO and CLIP
    extractors beside it (the page takes extractors from the hub or the projects folder)."""
    run = ui[1] / "scored"
    shutil.copytree(lora_with_te, run)
    for src, name in zip(extractors, ("dino", "clip")):
        shutil.copytree(src, ui[1] / "extractors" / name)
    return "scored"


def test_a_run_and_its_checkpoint_in_generate_grid_and_evaluate(page, ui, scored_run):
    from playwright.sync_api import expect

    pick(page, "gen-run", scored_run)
    expect(page.locator("#gen-checkpoint input")).to_have_value("final")
    pick(page, "gen-checkpoint", "step-2")
    page.locator("#gen-prompt textarea").fill("a photo of sks dog")
    set_number(page, "gen-steps", 2)
    set_number(page, "gen-seed", 3)
    set_number(page, "gen-scale-unet", 0.5)
    page.click("#gen-button")
    info = page.locator("#gen-info textarea")
    expect(info).to_have_value(re.compile(r"<lora:scored-step-2:1:0\.5>"))

    # The PNG, loaded into a fresh page, restores the form: run, checkpoint, scale, seed, steps
    png = max((ui[1] / "outputs").glob("*.png"), key=lambda p: p.stat().st_mtime)
    page.reload()
    page.wait_for_selector("#gen-prompt textarea")
    page.locator("#gen-png input[type=file]").set_input_files(str(png))
    expect(page.locator("#gen-png-note")).to_contain_text("settings loaded")
    expect(page.locator("#gen-run input")).to_have_value(scored_run)
    expect(page.locator("#gen-checkpoint input")).to_have_value("step-2")
    expect(page.locator("#gen-seed input")).to_have_value("3")
    assert float(number(page, "gen-scale-unet")) == 0.5 and int(number(page, "gen-steps")) == 2
    expect(page.locator("#gen-prompt textarea")).to_have_value("a photo of sks dog")

    # The grid fills in over the run's checkpoints and the LoRA scale
    tab(page, "Grid")
    pick(page, "grid-x", "checkpoint")
    fill(page, "grid-x-values", "step-2,final")
    pick(page, "grid-y", "lora_scale_unet")
    fill(page, "grid-y-values", "0,1")
    page.click("#grid-button")
    expect(page.locator("#grid-status")).to_contain_text("4/4 cells · done")
    expect(page.locator("#grid-image img")).to_be_visible()
    assert (ui[1] / "grids" / "grid.png").is_file() and len(list((ui[1] / "grids" / "cells").glob("*.png"))) == 4

    # Evaluate: score the checkpoints from the page (`dreambooth select` in its own process), then the
    # table, plots and recommendation appear
    tab(page, "Evaluate")
    pick(page, "eval-run", scored_run)
    expect(page.locator("#eval-best")).to_contain_text("no scores yet")
    page.get_by_text("Score the run's checkpoints").click()
    # The accordion mounts its boxes on opening: wait for their own values before typing over them
    expect(page.locator("#eval-dino textarea")).to_have_value("facebook/dino-vits16")
    expect(page.locator("#eval-clip textarea")).to_have_value("openai/clip-vit-base-patch32")
    fill(page, "eval-dino", "extractors/dino")
    fill(page, "eval-clip", "extractors/clip")
    for elem_id, value in (("eval-prompts", 2), ("eval-images", 1), ("eval-steps", 2)):
        set_number(page, elem_id, value)
    page.click("#eval-score")
    expect(page.locator("#eval-status")).to_contain_text("scoring scored: finished")
    expect(page.locator("#eval-best")).to_contain_text("Recommended: step")
    expect(page.locator("#eval-table")).to_contain_text("CLIP-T")
    expect(page.locator("#eval-plots .thumbnail-item").first).to_be_visible()


def test_paths_from_the_page_never_leave_the_projects_folder(ui, tiny_model, tmp_path):
    """The page offers only what is inside the projects folder, but anyone can post any value to the
    server: every path-like field is checked there too."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, projects = ui
    outside = tmp_path / "outside"
    outside.mkdir()
    client = Client(url, verbose=False)
    for bad in ("../..", "/etc", str(outside), "scored/../../x"):
        try:  # Gradio refuses what its dropdown never offered; behind it, the projects folder refuses
            best, _, plots = client.predict(bad, api_name="/on_eval")
            assert best.startswith("⚠️") and plots == [], (bad, best)
        except AppError as e:
            assert "not in the list of choices" in str(e), e

        # Free-text fields: the photos folder and the run name of the train form
        form = dict(
            name="ok", photos=None, folder=bad, model_=str(tiny_model), identifier="sks", noun="dog", ip="", cp=""
        )
        form |= dict(method="lora", steps_=10, lr=1e-4, prior=False, ncls=0, res=0, every=0, te=False)
        message, *_ = client.predict(*form.values(), api_name="/on_start")
        assert message.startswith("⚠️ photos folder"), (bad, message)
        form |= dict(name=bad, folder="")
        message, *_ = client.predict(*form.values(), api_name="/on_start")
        assert message.startswith("⚠️ run name"), (bad, message)
        # ... and a base model given as a path
        with pytest.raises(AppError, match="model '.*': give a hub id"):
            client.predict("a dog", "", bad, "(none)", None, 1, 1, 7.5, 2, "ddim", 0, 0, 0, 1, api_name="/on_generate")
    assert sorted(p.name for p in projects.iterdir() if p.name == "ok") == [] and not list(outside.iterdir())
