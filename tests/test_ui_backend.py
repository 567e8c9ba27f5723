"""The web UI's logic without a browser (issue 10): paths never leave the projects folder, uploads are
checked as training checks photos, the train form becomes a run config, and runs are supervised as
their own processes (a crash ends the run, not the UI)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from dreambooth.errors import UserError
from dreambooth.ui.projects import UI_CONFIG, Projects, TrainForm, save_uploads, view, write_train_config


@pytest.fixture
def projects(tmp_path) -> Projects:
    (tmp_path / "projects").mkdir()
    return Projects(tmp_path / "projects")


@pytest.mark.parametrize(
    "bad",
    ["../x", "/etc/passwd", "a/../../x", "a/../b", "~/.ssh", "a\\..\\b", "", ".", "a//b", "C:/Windows", "x\x00y"],
)
def test_no_path_from_the_page_leaves_the_projects_folder(projects, bad):
    with pytest.raises(UserError):
        projects.path(bad, "run")


def test_a_link_pointing_out_of_the_projects_folder_is_refused(projects, tmp_path):
    (tmp_path / "secret").mkdir()
    (projects.root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UserError, match="outside"):
        projects.path("link", "run")
    assert projects.path("a/b", "run") == projects.root / "a" / "b"


def test_runs_lists_ui_and_cli_runs_and_refuses_other_names(projects):
    for rel in ("mine", "sweep1/runs/lr-1", "cli-run", "outputs/not-a-run"):
        (projects.root / rel).mkdir(parents=True)
    (projects.root / "mine" / UI_CONFIG).write_text("{}")
    (projects.root / "sweep1/runs/lr-1/config.yaml").write_text("{}")
    (projects.root / "cli-run/config.yaml").write_text("{}")
    (projects.root / "outputs/not-a-run/config.yaml").write_text("{}")
    assert projects.runs() == ["cli-run", "mine", "sweep1/runs/lr-1"]
    assert projects.run("sweep1/runs/lr-1") == projects.root / "sweep1/runs/lr-1"
    for bad in ("../projects/mine", "sweep1", "nothing", "/abs"):
        with pytest.raises(UserError):
            projects.run(bad)
    for bad in ("../evil", "a/b", "outputs", "-x", "x" * 65):
        with pytest.raises(UserError, match="run name"):
            projects.new_run_dir(bad)


def _photos(tmp_path) -> list[Path]:
    from dreambooth.demo import example_subject

    d = tmp_path / "upload"
    if not d.exists():
        shutil.copytree(example_subject(), d)
    return sorted(p for p in d.iterdir() if p.suffix in (".jpg", ".png"))


def test_uploads_are_checked_like_training_photos_and_land_inside_the_run(projects, tmp_path):
    photos = _photos(tmp_path)
    evil = tmp_path / "up2" / "..%2F..%2Fevil.png"
    evil.parent.mkdir()
    shutil.copyfile(photos[0], evil)
    run = projects.new_run_dir("r1")
    saved = save_uploads(projects, run, [*photos, evil])
    assert all(p.parent == run / "photos" for p in saved) and len(saved) == len(photos) + 1
    assert not (projects.root.parent / "evil.png").exists()

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    run2 = projects.new_run_dir("r2")
    with pytest.raises(UserError, match="photo broken.png: not an image"):
        save_uploads(projects, run2, [photos[0], broken])
    assert not (run2 / "photos").exists()  # nothing copied unless every file passes
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not an image file name"):
        save_uploads(projects, run2, [text])


def test_upload_size_limit(projects, tmp_path, monkeypatch):
    import dreambooth.ui.projects as p

    monkeypatch.setattr(p, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(UserError, match="over the 0 MB limit"):
        save_uploads(projects, projects.new_run_dir("r"), _photos(tmp_path)[:1])


def _form(**kw) -> TrainForm:
    base = dict(
        name="cat1",
        identifier="sks",
        class_noun="dog",
        method="lora",
        max_steps=6,
        learning_rate=1e-3,
        prior=False,
        resolution=64,
        checkpoint_every=3,
    )
    base.update(kw)
    return TrainForm(**base)


def test_the_train_form_becomes_a_run_config(projects, tiny_model, tmp_path):
    config = write_train_config(projects, _form(prior=True, num_class_images=2), str(tiny_model), _photos(tmp_path))
    cfg = yaml.safe_load(config.read_text())
    run = projects.root / "cat1"
    assert config == run / UI_CONFIG
    assert cfg["instance_prompt"] == "a photo of sks dog" and cfg["class_prompt"] == "a photo of a dog"
    assert cfg["instance_dir"] == str(run / "photos") and cfg["class_dir"] == str(run / "class-images")
    assert cfg["output_dir"] == str(run) and cfg["max_steps"] == 6 and cfg["num_class_images"] == 2
    assert cfg["validation_prompt"] == ["a photo of sks dog"]
    assert projects.runs() == ["cat1"]
    with pytest.raises(UserError, match="already holds a run"):
        write_train_config(projects, _form(), str(tiny_model), _photos(tmp_path))

    # A refusal leaves nothing behind: here training's own check of the settings
    with pytest.raises(UserError, match="--learning-rate"):
        write_train_config(projects, _form(name="cat2", learning_rate=5.0), str(tiny_model), _photos(tmp_path))
    assert not (projects.root / "cat2").exists()
    with pytest.raises(UserError, match="photos folder"):
        write_train_config(projects, _form(name="cat3", photos_folder="../x"), str(tiny_model), [])
    ti = write_train_config(projects, _form(name="ti", method="textual-inversion"), str(tiny_model), _photos(tmp_path))
    assert yaml.safe_load(ti.read_text())["token"] == "<sks-dog>"


def _wait(supervisor, run, until=("finished", "stopped"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = supervisor.state(run)
        if state is not None and (state in until or state.startswith("failed")):
            return state
        time.sleep(0.2)
    raise AssertionError(f"{run}: still {supervisor.state(run)} after {timeout} s")


def test_supervised_runs_finish_and_a_crash_ends_only_its_run(projects, tiny_model, tmp_path):
    from dreambooth.ui.supervisor import Supervisor

    sup = Supervisor()
    ok = write_train_config(projects, _form(name="ok"), str(tiny_model), _photos(tmp_path)).parent
    model2 = tmp_path / "model2"
    shutil.copytree(tiny_model, model2)
    crash = write_train_config(projects, _form(name="crash"), str(model2), _photos(tmp_path)).parent
    (model2 / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"torn")  # breaks after the checks
    sup.start(ok)
    sup.start(crash)
    with pytest.raises(UserError, match="is training already"):
        sup.start(ok)
    assert _wait(sup, crash).startswith("failed (exit")
    assert _wait(sup, ok) == "finished"
    v = view(ok, sup.state(ok))
    assert v.status == "finished" and v.step == 6 and v.finished and len(v.losses) == 6
    assert v.validation_step == 6 and len(v.validation_images) == 2
    assert json.loads((ok / "ui-process.json").read_text())["pid"] > 0
    assert "finished:" in (ok / "train.log").read_text()
    with pytest.raises(UserError, match="is not training"):
        sup.stop(ok)


def test_a_later_ui_sees_and_stops_a_run_an_earlier_one_started_and_a_killed_run_is_reported(
    projects, tiny_model, tmp_path
):
    import os
    import signal

    from dreambooth.runs import list_checkpoints
    from dreambooth.ui.supervisor import Supervisor

    first = Supervisor()
    run = write_train_config(
        projects, _form(name="long", max_steps=5000, checkpoint_every=5000), str(tiny_model), _photos(tmp_path)
    ).parent
    first.start(run)
    deadline = time.monotonic() + 120
    while not view(run).losses:
        assert time.monotonic() < deadline and first.state(run) == "training", (run / "train.log").read_text()
        time.sleep(0.2)
    later = Supervisor()  # the UI restarted: it knows the run by its pid only
    assert later.state(run) == "training"
    later.stop(run)
    deadline = time.monotonic() + 120
    while later.state(run) in ("training", "stopping"):
        assert time.monotonic() < deadline, (run / "train.log").read_text()[-3000:]
        time.sleep(0.2)
    # The later UI sees the process end when its memory is released; the first one when the process can
    # be reaped, a moment later: wait for it too.
    assert _wait(first, run) == "stopped", (run / "train.log").read_text()[-3000:]  # exit 130 after a checkpoint
    assert list_checkpoints(run) and view(run).status == "stopped"

    first.start(run, resume=True)
    deadline = time.monotonic() + 120
    while "resuming from" not in (log := (run / "train.log").read_text()):
        assert first.state(run) == "training" and time.monotonic() < deadline, log[-3000:]
        time.sleep(0.2)
    os.kill(first.jobs[run].pid, signal.SIGKILL)
    assert _wait(first, run).startswith(f"failed (exit {-signal.SIGKILL})")
    assert view(run, first.state(run)).status.startswith("failed")


def test_the_ui_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    from dreambooth.cli import COMMANDS, _parser, main, plain_config

    defaults = plain_config(_parser().parse_args(["ui"]), COMMANDS["ui"].config, config_file=False)
    assert (defaults.host, defaults.port, defaults.projects) == ("127.0.0.1", 7860, "dreambooth-projects")

    (tmp_path / "file").write_text("x")
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    for args, flag in (
        (["--port", port, "--projects", str(tmp_path / "p")], f"--port {port}"),
        (["--auth", "nopassword"], "--auth"),
        (["--projects", str(tmp_path / "file")], "--projects"),
    ):
        rc = main(["ui", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and flag in err[0], err
    taken.close()


def test_exposing_the_ui_warns_and_auth_guards_it(tmp_path, tiny_model, capsys):
    import urllib.error
    import urllib.parse
    import urllib.request

    from dreambooth.ui.app import UIConfig, exposure_warning, run_ui

    assert exposure_warning("127.0.0.1", False, None) is None
    assert "0.0.0.0" in exposure_warning("0.0.0.0", False, None) and "--auth" in exposure_warning(
        "0.0.0.0", False, None
    )
    assert "gradio.live" in exposure_warning("127.0.0.1", True, ("u", "p"))

    from test_ui_browser import _free_port

    port = _free_port()
    cfg = UIConfig(port=port, projects=str(tmp_path / "p"), model=str(tiny_model), auth="ann:secret", host="0.0.0.0")
    app, backend = run_ui(cfg, block=False)
    assert "warning: the UI is open to every machine that can reach 0.0.0.0" in capsys.readouterr().err
    try:
        base = f"http://127.0.0.1:{port}"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/config", timeout=10)
        assert e.value.code == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        data = urllib.parse.urlencode({"username": "ann", "password": "wrong"}).encode()
        with pytest.raises(urllib.error.HTTPError):
            opener.open(f"{base}/login", data=data, timeout=10)
        data = urllib.parse.urlencode({"username": "ann", "password": "secret"}).encode()
        opener.open(f"{base}/login", data=data, timeout=10)
        assert opener.open(f"{base}/config", timeout=10).status == 200
    finally:
        app.close()


def test_the_grid_fills_in_cell_by_cell_and_a_folder_of_photos_inside_the_projects_folder_trains(
    projects, tiny_model, tmp_path
):
    from dreambooth.ui.backend import Backend
    from dreambooth.ui.supervisor import Supervisor

    backend = Backend(projects, str(tiny_model), Supervisor())
    form = dict(prompt="a photo of a dog", model=str(tiny_model), run="(none)", checkpoint=None)
    form |= dict(lora_scale_unet=1, lora_scale_text_encoder=1, guidance=5, steps=2, scheduler="ddim", seed=0)
    seen = [
        (done, total, image.size) for image, done, total in backend.grid(form, ("seed", "0-2"), ("guidance", "1,5"))
    ]
    assert [d for d, _, _ in seen] == [0, 1, 2, 3, 4, 5, 6] and {t for _, t, _ in seen} == {6}
    assert len({size for _, _, size in seen}) == 1  # blank cells keep the grid's shape
    assert (projects.root / "grids" / "grid.png").is_file()
    again = list(backend.grid(form, ("seed", "0-2"), ("guidance", "1,5")))
    assert [d for _, d, _ in again] == [6]  # every cell from the cache

    # A page closed mid-grid leaves its generator suspended: it must not hold generation's lock
    abandoned = backend.grid(form, ("seed", "3-5"), ("guidance", "1,5"))
    assert [next(abandoned)[1], next(abandoned)[1]] == [0, 1]
    assert backend.lock.acquire(blocking=False)
    backend.lock.release()

    shutil.copytree(_photos(tmp_path)[0].parent, projects.root / "shared-photos")
    config = write_train_config(projects, _form(name="from-folder", photos_folder="shared-photos"), str(tiny_model), [])
    assert yaml.safe_load(config.read_text())["instance_dir"] == str(projects.root / "shared-photos")
    assert not (config.parent / "photos").exists()


def test_scoring_from_the_page_is_refused_for_runs_without_weights_and_extractors_outside(
    projects, tiny_model, tmp_path
):
    from dreambooth.ui.backend import Backend
    from dreambooth.ui.supervisor import Supervisor

    backend = Backend(projects, str(tiny_model), Supervisor())
    (projects.root / "empty").mkdir()
    (projects.root / "empty" / UI_CONFIG).write_text("{}")
    with pytest.raises(UserError, match="no checkpoint and no final weights"):
        backend.score("empty", "facebook/dino-vits16", "openai/clip-vit-base-patch32", 2, 1, 2)
    write_train_config(
        projects, _form(name="done", max_steps=2, checkpoint_every=1), str(tiny_model), _photos(tmp_path)
    )
    from dreambooth.training.loop import train
    from dreambooth.ui.projects import saved_config

    train(saved_config(projects.root / "done"), progress=False)
    for bad in ("/etc", "../x", str(tmp_path)):
        with pytest.raises(UserError, match="DINO model"):
            backend.score("done", bad, "openai/clip-vit-base-patch32", 2, 1, 2)
    with pytest.raises(UserError, match="--prompts"):
        backend.score("done", "facebook/dino-vits16", "openai/clip-vit-base-patch32", 99, 1, 2)
    assert backend.scoring.state(projects.root / "done") is None  # nothing started


def test_the_loss_curve_is_a_running_mean():
    from dreambooth.ui.page import loss_plot, running_mean

    assert running_mean([1, 2, 3, 4, 5], 2) == [1, 1.5, 2.5, 3.5, 4.5]
    assert running_mean([4.0], 10) == [4.0] and running_mean([], 3) == []
    assert loss_plot([(i, 1.0 / i) for i in range(1, 500)], "loss").size == (640, 400)


def test_a_png_brings_back_its_run_checkpoint_and_settings(projects, tiny_model, lora_with_te, tmp_path):
    from dreambooth.ui.backend import Backend
    from dreambooth.ui.supervisor import Supervisor

    shutil.copytree(lora_with_te, projects.root / "r")
    backend = Backend(projects, str(tiny_model), Supervisor())
    form = dict(prompt="a photo of sks dog", negative_prompt="blurry", model=str(tiny_model), run="r")
    form |= dict(checkpoint="step-2", lora_scale_unet=0.7, lora_scale_text_encoder=0.3, guidance=4, steps=2)
    form |= dict(scheduler="euler", seed=11, width=0, height=0, num_images=1)
    (record,) = backend.generate(form)
    back, note = backend.form_of_png(record["path"])
    assert note == ""
    for key in ("prompt", "negative_prompt", "model", "run", "checkpoint", "scheduler", "seed", "steps"):
        assert back[key] == form[key], key
    assert (back["guidance"], back["lora_scale_unet"], back["lora_scale_text_encoder"]) == (4, 0.7, 0.3)

    # The same image's run moved out of the projects folder: the rest still loads, and the page says so
    moved = tmp_path / "elsewhere"
    shutil.move(projects.root / "r", moved)
    back, note = backend.form_of_png(record["path"])
    assert back["run"] == "(none)" and back["seed"] == 11 and "not a run of the projects folder" in note
    (tmp_path / "plain.png").write_bytes((projects.root / "outputs" / Path(record["path"]).name).read_bytes()[:8])
    with pytest.raises(UserError):
        backend.form_of_png(str(tmp_path / "plain.png"))


def test_a_run_training_from_the_command_line_shows_as_training(projects):
    from dreambooth import runs as runlock
    from dreambooth.ui.projects import OUTSIDE

    run = projects.root / "cli"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    (run / "run.json").write_text('{"status": "training", "max_steps": 100}')
    (run / "train_log.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    with runlock.hold(run):  # as `dreambooth train` holds its folder
        v = view(run)
        assert v.status == OUTSIDE == "training (started outside this UI)" and v.step == 2 and v.max_steps == 100
    assert view(run).status == "stopped"  # its process ended: no lock, however fresh its log


def test_the_ui_sees_and_stops_a_run_started_from_the_command_line(projects, tiny_model, tmp_path):
    import subprocess
    import sys

    from dreambooth import runs as runlock
    from dreambooth.ui.projects import OUTSIDE
    from dreambooth.ui.supervisor import Supervisor

    config = write_train_config(
        projects, _form(name="cli", max_steps=5000, checkpoint_every=5000), str(tiny_model), _photos(tmp_path)
    )
    run = config.parent
    argv = [sys.executable, "-m", "dreambooth", "train", "--config", str(config)]
    with open(tmp_path / "cli.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not view(run).losses:
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "cli.log").read_text()
            time.sleep(0.2)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"dreambooth train (pid {proc.pid}) is training into it now" in second.stderr.strip().splitlines()[-1]

        sup = Supervisor()
        assert sup.state(run) == OUTSIDE and view(run, sup.state(run)).status == OUTSIDE
        assert sup.running() == []  # the UI's Ctrl-C leaves it alone
        with pytest.raises(UserError, match="is training already"):
            sup.start(run, resume=True)
        sup.stop(run)
        assert proc.wait(timeout=120) == 130  # stopped after its step, with a checkpoint
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while sup.state(run) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert runlock.holder(run) is None and view(run).status == "stopped" and view(run).checkpoints
