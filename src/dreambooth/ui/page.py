"""The web UI's page (Gradio): four tabs whose events call ui.backend.Backend.

Generate (every setting, a run and its checkpoint, images with their settings, any image or PNG back
into the form), Grid (X/Y over any setting, filled in as it is generated), Train (a new run's photos
and settings; its progress, loss and validation images while it trains; stop with a checkpoint,
resume) and Evaluate (score a run's checkpoints with `dreambooth select`; its table, plots and
recommendation).
"""

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import SCHEDULER_NAMES
from ..errors import UserError
from .backend import GRID_AXES, NONE, Backend
from .projects import TrainForm, active, default_prompts, weights_choices


@dataclass
class GenerateForm:
    """The Generate tab's form: its components (in form order), and their values as a dict."""

    inputs: list
    of: object  # values -> dict
    run: object  # the run dropdown


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the window - 1 before it (fewer at the start)."""
    sums = list(itertools.accumulate(values, initial=0.0))
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def loss_plot(losses: list[tuple[int, float]], title: str):
    """The loss over steps with its running mean (Pillow; no plotting library)."""
    from ..evaluation.plot import line_plot

    window = max(1, len(losses) // 20)
    sums = list(itertools.accumulate((v for _, v in losses), initial=0.0))
    smooth = [
        (step, (sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1)) for i, (step, _) in enumerate(losses)
    ]
    series = {"loss": losses} if len(losses) <= 50 else {f"loss (mean of {window})": smooth}
    return line_plot(series, title, "step")


def status_line(name: str, v) -> str:
    total = v.max_steps or 0
    pct = f" ({100 * v.step / total:.0f} %)" if total else ""
    last = f", loss {v.losses[-1][1]:.4f}" if v.losses else ""
    ckpt = f", checkpoints at {', '.join(str(s) for s in v.checkpoints)}" if v.checkpoints else ""
    return f"**{name}**: {v.status} · step {v.step}/{total or '?'}{pct}{last}{ckpt}"


def caption(s: dict) -> str:
    lora = f", LoRA {s['lora_name']} {s['lora_scale_unet']:g}/{s['lora_scale_text_encoder']:g}" if s.get("lora") else ""
    return f"seed {s['seed']}, guidance {s['guidance']:g}, {s['steps']} steps, {s['scheduler']}{lora}"


def _generate_tab(gr, backend: Backend) -> GenerateForm:
    """The Generate tab; its form is also the base of every grid."""
    run_choices = [NONE, *backend.runs()]
    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="gen-prompt")
                negative = gr.Textbox(label="Negative prompt", elem_id="gen-negative")
                model = gr.Textbox(label="Base model", value=backend.model or "", elem_id="gen-model")
                with gr.Row():
                    run = gr.Dropdown(run_choices, value=NONE, label="Trained run", elem_id="gen-run")
                    checkpoint = gr.Dropdown([], label="Checkpoint", elem_id="gen-checkpoint")
                    refresh_runs = gr.Button("↻", scale=0, min_width=40, elem_id="gen-refresh-runs")
                scale_unet = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale UNet", elem_id="gen-scale-unet")
                scale_te = gr.Slider(
                    0, 2, value=1.0, step=0.05, label="LoRA scale text encoder", elem_id="gen-scale-te"
                )
                guidance = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance", elem_id="gen-guidance")
                steps = gr.Slider(1, 150, value=30, step=1, label="Steps", elem_id="gen-steps")
                scheduler = gr.Dropdown(
                    list(SCHEDULER_NAMES), value="dpm++2m-karras", label="Scheduler", elem_id="gen-scheduler"
                )
                with gr.Row():
                    width = gr.Number(0, label="Width (0: the model's)", precision=0, elem_id="gen-width")
                    height = gr.Number(0, label="Height (0: the model's)", precision=0, elem_id="gen-height")
                with gr.Row():
                    seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id="gen-seed")
                    random_seed = gr.Button("Random seed", scale=0, elem_id="gen-random")
                    reuse_seed = gr.Button("Reuse last seed", scale=0, elem_id="gen-reuse")
                num_images = gr.Slider(1, 16, value=1, step=1, label="Number of images", elem_id="gen-n")
                generate = gr.Button("Generate", variant="primary", elem_id="gen-button")
            with gr.Column(scale=1):
                gallery = gr.Gallery(label="Images", columns=2, elem_id="gen-gallery", allow_preview=True)
                info = gr.Textbox(label="Settings of the selected image", lines=6, elem_id="gen-info")
                send = gr.Button("Send the selected image's settings to the form", elem_id="gen-send")
                png = gr.File(
                    label="Load the settings of a PNG (ours or AUTOMATIC1111's)",
                    file_types=[".png"],
                    elem_id="gen-png",
                )
                png_note = gr.Markdown(elem_id="gen-png-note")
        records = gr.State([])
        selected = gr.State(None)
        last_seed = gr.State(None)

    form_inputs = [
        prompt,
        negative,
        model,
        run,
        checkpoint,
        scale_unet,
        scale_te,
        guidance,
        steps,
        scheduler,
        width,
        height,
        seed,
    ]
    form_keys = [
        "prompt",
        "negative_prompt",
        "model",
        "run",
        "checkpoint",
        "lora_scale_unet",
        "lora_scale_text_encoder",
        "guidance",
        "steps",
        "scheduler",
        "width",
        "height",
        "seed",
    ]

    def form_of(values) -> dict:
        return dict(zip(form_keys, values))

    def on_run(name):
        if not name or name == NONE:
            return gr.update(choices=[], value=None)
        try:
            choices = weights_choices(backend.projects.run(name))
        except UserError as e:
            raise gr.Error(str(e)) from None
        return gr.update(choices=choices, value=choices[0] if choices else None)

    run.input(on_run, run, checkpoint)  # (not .change: a form filled by send or a PNG sets both)

    def on_generate(*values):
        *form_values, n = values
        form = form_of(form_values)
        form["num_images"] = n
        try:
            recs = backend.generate(form)
        except UserError as e:
            raise gr.Error(str(e)) from None
        items = [(r["path"], caption(r["settings"])) for r in recs]
        first = recs[0]["settings"]
        return items, recs, 0, first["seed"], settings_text(recs[0])

    def settings_text(rec: dict) -> str:
        from ..generation import ImageSettings, infotext

        return infotext(ImageSettings(**rec["settings"]))

    generate.click(
        on_generate,
        [*form_inputs, num_images],
        [gallery, records, selected, last_seed, info],
        concurrency_id="engine",
        concurrency_limit=1,
    )

    def on_select(recs, evt: gr.SelectData):
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        return i, settings_text(recs[i]) if 0 <= i < len(recs) else ""

    gallery.select(on_select, records, [selected, info])

    def on_send(recs, i):
        if i is None or not recs or not 0 <= i < len(recs):
            raise gr.Error("select an image first")
        r, s = recs[i], recs[i]["settings"]
        runs_now = [NONE, *backend.runs()]
        ckpts = [] if r["run"] == NONE else weights_choices(backend.projects.run(r["run"]))
        return (
            r["prompt"],
            s["negative_prompt"],
            r["model"],
            gr.update(choices=runs_now, value=r["run"]),
            gr.update(choices=ckpts, value=r["checkpoint"] or None),
            s["lora_scale_unet"],
            s["lora_scale_text_encoder"],
            s["guidance"],
            s["steps"],
            s["scheduler"],
            s["width"],
            s["height"],
            s["seed"],
        )

    send.click(on_send, [records, selected], form_inputs)

    def on_png(file):
        if file is None:
            return (*[gr.update()] * len(form_keys), "")
        try:
            form, note = backend.form_of_png(file if isinstance(file, str) else file.name)
        except UserError as e:
            return (*[gr.update()] * len(form_keys), f"⚠️ {e}")
        values = []
        for key in form_keys:
            if key == "run":
                values.append(gr.update(choices=[NONE, *backend.runs()], value=form["run"]))
            elif key == "checkpoint":
                ckpts = [] if form["run"] == NONE else weights_choices(backend.projects.run(form["run"]))
                values.append(gr.update(choices=ckpts, value=form["checkpoint"]))
            else:
                values.append(form[key] if key in form else gr.update())
        return (*values, "settings loaded" + (f" (not taken: {note})" if note else ""))

    png.upload(on_png, png, [*form_inputs, png_note])
    random_seed.click(lambda: -1, None, seed)
    reuse_seed.click(lambda s: -1 if s is None else s, last_seed, seed)
    refresh_runs.click(lambda: gr.update(choices=[NONE, *backend.runs()]), None, run)
    return GenerateForm(form_inputs, form_of, run)


def _grid_tab(gr, backend: Backend, form: GenerateForm) -> None:
    """The Grid tab: X/Y over any setting, the Generate form's values for the rest, filled in cell by cell."""
    form_inputs, form_of = form.inputs, form.of
    with gr.Tab("Grid", id="grid"):
        gr.Markdown(
            "X/Y grid over any setting; the other settings come from the Generate tab. Values: `3,5,7.5`, "
            "ranges `0-3` or `1-2:0.5`, prompts separated by `|`, checkpoints `final,step-500`."
        )
        with gr.Row():
            x_name = gr.Dropdown(list(GRID_AXES), value="guidance", label="X", elem_id="grid-x")
            x_values = gr.Textbox(label="X values", value="3,5,7.5", elem_id="grid-x-values")
            y_name = gr.Dropdown([NONE, *GRID_AXES], value=NONE, label="Y", elem_id="grid-y")
            y_values = gr.Textbox(label="Y values", elem_id="grid-y-values")
        grid_button = gr.Button("Make grid", variant="primary", elem_id="grid-button")
        grid_status = gr.Markdown(elem_id="grid-status")
        grid_image = gr.Image(label="Grid", type="pil", elem_id="grid-image")

    def on_grid(xn, xv, yn, yv, *values):
        form = form_of(values)
        try:
            for image, done, total in backend.grid(form, (xn, xv), (yn, yv)):
                yield image, f"{done}/{total} cells" + (" · done" if done == total else "")
        except UserError as e:
            raise gr.Error(str(e)) from None

    grid_button.click(
        on_grid,
        [x_name, x_values, y_name, y_values, *form_inputs],
        [grid_image, grid_status],
        concurrency_id="engine",
        concurrency_limit=1,
    )


def _train_tab(gr, backend: Backend, timer):
    """The Train tab: a new run's form, and the monitor of a run (progress, loss, validation images)."""
    runs = backend.runs()
    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column():
                t_name = gr.Textbox(label="Run name", elem_id="train-name")
                t_photos = gr.File(
                    label="Photos of the subject (3-5)",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="train-photos",
                )
                t_folder = gr.Textbox(
                    label="...or a folder of photos inside the projects folder", elem_id="train-folder"
                )
                t_model = gr.Textbox(label="Base model", value=backend.model or "", elem_id="train-model")
                with gr.Row():
                    t_identifier = gr.Textbox(value="sks", label="Identifier", elem_id="train-identifier")
                    t_class = gr.Textbox(label="Class noun", placeholder="cat", elem_id="train-class")
                t_instance_prompt = gr.Textbox(label="Instance prompt", elem_id="train-instance-prompt")
                t_class_prompt = gr.Textbox(label="Class prompt", elem_id="train-class-prompt")
                t_method = gr.Radio(
                    ["lora", "full", "textual-inversion"], value="lora", label="Method", elem_id="train-method"
                )
                with gr.Row():
                    t_steps = gr.Number(1000, label="Steps", precision=0, elem_id="train-steps")
                    t_lr = gr.Number(1e-4, label="Learning rate", elem_id="train-lr")
                with gr.Row():
                    t_prior = gr.Checkbox(True, label="Prior preservation", elem_id="train-prior")
                    t_num_class = gr.Number(100, label="Class images", precision=0, elem_id="train-num-class")
                with gr.Accordion("More", open=False):
                    t_resolution = gr.Number(0, label="Resolution (0: the model's)", precision=0, elem_id="train-res")
                    t_every = gr.Number(
                        0, label="Checkpoint every (0: a quarter of the steps)", precision=0, elem_id="train-every"
                    )
                    t_te = gr.Checkbox(False, label="Train the text encoder (LoRA)", elem_id="train-te")
                t_start = gr.Button("Start training", variant="primary", elem_id="train-start")
                t_message = gr.Markdown(elem_id="train-message")
            with gr.Column():
                with gr.Row():
                    m_run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", elem_id="run-select")
                    m_refresh = gr.Button("↻", scale=0, min_width=40, elem_id="run-refresh")
                m_status = gr.Markdown(elem_id="run-status")
                with gr.Row():
                    m_stop = gr.Button("Stop (with a checkpoint)", elem_id="run-stop")
                    m_resume = gr.Button("Resume", elem_id="run-resume")
                m_loss = gr.Image(label="Loss", type="pil", elem_id="run-loss")
                m_validation = gr.Gallery(label="Validation images", columns=4, elem_id="run-validation")
                m_log = gr.Textbox(label="Log (last lines)", lines=6, elem_id="run-log")
        shown = gr.State(None)  # what the monitor shows, so a tick changes only what changed

    def fill_prompts(identifier, noun):
        return default_prompts(identifier, noun)

    t_identifier.change(fill_prompts, [t_identifier, t_class], [t_instance_prompt, t_class_prompt])
    t_class.change(fill_prompts, [t_identifier, t_class], [t_instance_prompt, t_class_prompt])

    def on_start(
        name, photos, folder, model_, identifier, noun, ip, cp, method, steps_, lr, prior, ncls, res, every, te
    ):
        form = TrainForm(
            name=name or "",
            identifier=identifier or "",
            class_noun=noun or "",
            instance_prompt=ip or "",
            class_prompt=cp or "",
            photos_folder=folder or "",
            method=method,
            max_steps=int(steps_ or 0),
            learning_rate=float(lr or 0),
            prior=bool(prior),
            num_class_images=int(ncls or 0),
            resolution=int(res or 0) or None,
            checkpoint_every=int(every or 0) or None,
            train_text_encoder=bool(te),
        )
        uploads = [p if isinstance(p, str) else getattr(p, "name", str(p)) for p in photos or []]
        try:
            started = backend.start_training(form, model_, uploads)
        except UserError as e:
            return f"⚠️ {e}", gr.update(), gr.update()
        choices = backend.runs()
        return f"started **{started}**", gr.update(choices=choices, value=started), None

    t_start.click(
        on_start,
        [
            t_name,
            t_photos,
            t_folder,
            t_model,
            t_identifier,
            t_class,
            t_instance_prompt,
            t_class_prompt,
            t_method,
            t_steps,
            t_lr,
            t_prior,
            t_num_class,
            t_resolution,
            t_every,
            t_te,
        ],
        [t_message, m_run, shown],
    )

    def monitor(name, before):
        if not name:
            return "no run selected", gr.update(), gr.update(), gr.update(), before
        try:
            folder, v = backend.status(name)
        except UserError as e:
            return f"⚠️ {e}", gr.update(), gr.update(), gr.update(), before
        # The loss plot is redrawn about 200 times over a run (each image sent is a file in Gradio's cache)
        every = max(1, (v.max_steps or 1000) // 200)
        key = (name, v.status, len(v.losses) // every, v.validation_step, len(v.validation_images))
        log_text = _tail(folder / "train.log")
        if before == key:
            return status_line(name, v), gr.update(), gr.update(), log_text, before
        plot = loss_plot(v.losses, f"loss · {name}") if len(v.losses) >= 2 else None
        images = [(str(p), f"step {v.validation_step} · {p.stem}") for p in v.validation_images]
        return status_line(name, v), plot, images, log_text, key

    monitor_out = [m_status, m_loss, m_validation, m_log, shown]
    m_run.change(lambda n: monitor(n, None), m_run, monitor_out)
    m_refresh.click(lambda: gr.update(choices=backend.runs()), None, m_run)
    timer.tick(monitor, [m_run, shown], monitor_out, show_progress="hidden")

    def on_stop(name):
        return said(lambda: backend.stop(name), f"stopping **{name}** after its step (it saves a checkpoint)")

    def on_resume(name):
        return said(lambda: backend.resume(name), f"resumed **{name}**")

    m_stop.click(on_stop, m_run, t_message)
    m_resume.click(on_resume, m_run, t_message)
    return m_run


def _evaluate_tab(gr, backend: Backend, timer):
    """The Evaluate tab: score a run's checkpoints (dreambooth select), see its table and recommendation."""
    runs = backend.runs()
    with gr.Tab("Evaluate", id="evaluate"):
        gr.Markdown(
            "A run's scores from `dreambooth select --run RUN` (DINO, CLIP-I, CLIP-T, PRES of every checkpoint) "
            "and the checkpoint and settings it recommends."
        )
        with gr.Row():
            e_run = gr.Dropdown(runs, label="Run", elem_id="eval-run")
            e_refresh = gr.Button("↻", scale=0, min_width=40, elem_id="eval-refresh")
        with gr.Accordion("Score the run's checkpoints", open=False):
            with gr.Row():
                e_dino = gr.Textbox("facebook/dino-vits16", label="DINO model", elem_id="eval-dino")
                e_clip = gr.Textbox("openai/clip-vit-base-patch32", label="CLIP model", elem_id="eval-clip")
            with gr.Row():
                e_prompts = gr.Number(5, label="DreamBench prompts", precision=0, elem_id="eval-prompts")
                e_images = gr.Number(4, label="Images per prompt", precision=0, elem_id="eval-images")
                e_steps = gr.Number(30, label="Denoising steps", precision=0, elem_id="eval-steps")
            e_score = gr.Button("Score checkpoints (dreambooth select)", elem_id="eval-score")
        e_status = gr.Markdown(elem_id="eval-status")
        e_best = gr.Markdown(elem_id="eval-best")
        e_table = gr.Markdown(elem_id="eval-table")
        e_plots = gr.Gallery(label="Metrics over steps", columns=2, elem_id="eval-plots")
        e_shown = gr.State(None)

    def on_eval(name):
        from ..evaluation.select import selected

        if not name:
            return "", "", []
        try:
            folder = backend.projects.run(name)
        except UserError as e:
            return f"⚠️ {e}", "", []
        sel = selected(folder)
        if sel is None:
            return f"**{name}** has no scores yet: run `dreambooth select --run {folder}`", "", []
        m = sel["metrics"]
        best = (
            f"Recommended: **step {sel['step']}**, LoRA scale {sel['lora_scale_unet']:g}, guidance "
            f"{sel['guidance']:g} · DINO {m['dino']:.3f}, CLIP-I {m['clip_i']:.3f}, CLIP-T {m['clip_t']:.3f}"
        )
        table_file = folder / "selection" / "selection.md"
        table = table_file.read_text(encoding="utf-8") if table_file.is_file() else ""
        plots = [(str(p), p.stem) for p in sorted((folder / "selection").glob("*.png"))]
        return best, table, plots

    e_run.change(on_eval, e_run, [e_best, e_table, e_plots])
    e_refresh.click(lambda: gr.update(choices=backend.runs()), None, e_run)

    def on_score(name, dino, clip, n_prompts, n_images, n_steps):
        return said(
            lambda: backend.score(name, dino, clip, n_prompts or 0, n_images or 0, n_steps or 0),
            f"scoring **{name}**: `dreambooth select` started (its log: select.log)",
        )

    e_score.click(on_score, [e_run, e_dino, e_clip, e_prompts, e_images, e_steps], e_status)

    def eval_tick(name, before):
        """While a run is scored: its state and last log line; the table once its selection changes."""
        if not name:
            return gr.update(), gr.update(), gr.update(), gr.update(), before
        try:
            folder = backend.projects.run(name)
        except UserError:
            return gr.update(), gr.update(), gr.update(), gr.update(), before
        state = backend.scoring.state(folder)
        selection = folder / "selection.json"
        key = (name, selection.stat().st_mtime_ns if selection.is_file() else None)
        status = gr.update()
        if active(state):
            status = f"scoring **{name}** · {_tail(folder / 'select.log', 1)}"
        elif state:
            status = f"scoring **{name}**: {state}"
        if key == before or before is None:
            return status, gr.update(), gr.update(), gr.update(), key
        return status, *on_eval(name), key

    timer.tick(eval_tick, [e_run, e_shown], [e_status, e_best, e_table, e_plots, e_shown], show_progress="hidden")
    e_run.change(lambda n: (None, ""), e_run, [e_shown, e_status])
    return e_run


def build_app(backend: Backend):
    import gradio as gr

    # Gradio keeps every image it sends in its cache: files older than an hour go, checked every 30 minutes
    with gr.Blocks(title="dreambooth", delete_cache=(1800, 3600)) as app:
        gr.Markdown(f"## dreambooth · projects: `{backend.projects.root}`")
        timer = gr.Timer(1.0)  # the Train and Evaluate tabs follow their runs' files with it
        form = _generate_tab(gr, backend)
        _grid_tab(gr, backend, form)
        m_run = _train_tab(gr, backend, timer)
        e_run = _evaluate_tab(gr, backend, timer)

        def on_load():  # the runs as they are when the page opens, not when the UI started
            now = backend.runs()
            return gr.update(choices=[NONE, *now]), gr.update(choices=now), gr.update(choices=now)

        app.load(on_load, None, [form.run, m_run, e_run])
    return app


def said(action, done: str) -> str:
    """What the page says after an action: `done`, or the UserError's line."""
    try:
        action()
    except UserError as e:
        return f"⚠️ {e}"
    return done


def _tail(path: Path, lines: int = 8) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p for p in text.replace("\r", "\n").splitlines() if p.strip()]
    return "\n".join(parts[-lines:])


def theme():
    import gradio as gr

    # System fonts: the default theme fetches Google Fonts, and a local tool calls no one.
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
