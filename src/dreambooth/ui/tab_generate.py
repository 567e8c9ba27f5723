"""The Generate tab: every setting, a run and its checkpoint, images with their settings, and any image
or PNG back into the form. Its form is also the base of every grid (ui.tab_grid)."""

from dataclasses import dataclass
from types import SimpleNamespace

from ..config import SCHEDULER_NAMES
from ..errors import UserError
from .backend import MODEL_SAMPLER, NONE, Backend
from .projects import weights_choices
from .tab_common import TabEvents

# The form's fields, in form order: the keys of the dict the backend takes, and the names of their
# components (and of an image's settings, which the form takes back)
FORM_KEYS = (
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
)


@dataclass
class GenerateForm:
    """The Generate tab's form: its components (in form order), and their values as a dict."""

    inputs: list
    of: object  # values -> dict
    run: object  # the run dropdown


def form_of(values) -> dict:
    """The form's values (in form order) as the dict the backend takes."""
    return dict(zip(FORM_KEYS, values))


def caption(s: dict) -> str:
    lora = f", LoRA {s['lora_name']} {s['lora_scale_unet']:g}/{s['lora_scale_text_encoder']:g}" if s.get("lora") else ""
    return f"seed {s['seed']}, guidance {s['guidance']:g}, {s['steps']} steps, {s['scheduler']}{lora}"


def settings_text(rec: dict) -> str:
    """An image's settings as its PNG's parameters say them (AUTOMATIC1111's infotext)."""
    from ..generation import ImageSettings, infotext

    return infotext(ImageSettings(**rec["settings"]))


def generate_tab(gr, backend: Backend) -> GenerateForm:
    """The Generate tab; its form is also the base of every grid."""
    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            w = _form_column(gr, backend)
            _images_column(gr, w)
        w.records = gr.State([])
        w.selected = gr.State(None)
        w.last_seed = gr.State(None)
    form_inputs = [getattr(w, key) for key in FORM_KEYS]
    _wire(gr, GenerateEvents(gr, backend), w, form_inputs)
    return GenerateForm(form_inputs, form_of, w.run)


def _form_column(gr, backend: Backend) -> SimpleNamespace:
    """The form (its components named as FORM_KEYS) and its buttons."""
    w = SimpleNamespace()
    with gr.Column(scale=1):
        w.prompt = gr.Textbox(label="Prompt", lines=2, elem_id="gen-prompt")
        w.negative_prompt = gr.Textbox(label="Negative prompt", elem_id="gen-negative")
        w.model = gr.Textbox(label="Base model", value=backend.model or "", elem_id="gen-model")
        with gr.Row():
            w.run = gr.Dropdown([NONE, *backend.runs()], value=NONE, label="Trained run", elem_id="gen-run")
            w.checkpoint = gr.Dropdown([], label="Checkpoint", elem_id="gen-checkpoint")
            w.refresh_runs = gr.Button("↻", scale=0, min_width=40, elem_id="gen-refresh-runs")
        w.lora_scale_unet = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale UNet", elem_id="gen-scale-unet")
        w.lora_scale_text_encoder = gr.Slider(
            0, 2, value=1.0, step=0.05, label="LoRA scale text encoder", elem_id="gen-scale-te"
        )
        w.guidance = gr.Slider(
            0, 20, value=_guidance_default(backend.model), step=0.5, label="Guidance", elem_id="gen-guidance"
        )
        w.steps = gr.Slider(1, 150, value=30, step=1, label="Steps", elem_id="gen-steps")
        w.scheduler = gr.Dropdown(
            [MODEL_SAMPLER, *SCHEDULER_NAMES], value=MODEL_SAMPLER, label="Scheduler", elem_id="gen-scheduler"
        )
        with gr.Row():
            w.width = gr.Number(0, label="Width (0: the model's)", precision=0, elem_id="gen-width")
            w.height = gr.Number(0, label="Height (0: the model's)", precision=0, elem_id="gen-height")
        with gr.Row():
            w.seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id="gen-seed")
            w.random_seed = gr.Button("Random seed", scale=0, elem_id="gen-random")
            w.reuse_seed = gr.Button("Reuse last seed", scale=0, elem_id="gen-reuse")
        w.num_images = gr.Slider(1, 16, value=1, step=1, label="Number of images", elem_id="gen-n")
        w.generate = gr.Button("Generate", variant="primary", elem_id="gen-button")
    return w


def _guidance_default(model: str | None) -> float:
    """The guidance the page starts at: the --model's family's (FLUX.1 [dev] 3.5, SD3 7, SD 7.5), 7.5
    when there is none or its configs cannot be read."""
    if not model:
        return 7.5
    from ..models import default_guidance

    try:
        return default_guidance(model)
    except (UserError, OSError):
        return 7.5


def _images_column(gr, w: SimpleNamespace) -> None:
    """The images with the selected one's settings, and the ways back into the form."""
    with gr.Column(scale=1):
        w.gallery = gr.Gallery(label="Images", columns=2, elem_id="gen-gallery", allow_preview=True)
        w.info = gr.Textbox(label="Settings of the selected image", lines=6, elem_id="gen-info")
        w.send = gr.Button("Send the selected image's settings to the form", elem_id="gen-send")
        w.png = gr.File(
            label="Load the settings of a PNG (ours or AUTOMATIC1111's)",
            file_types=[".png"],
            elem_id="gen-png",
        )
        w.png_note = gr.Markdown(elem_id="gen-png-note")


class GenerateEvents(TabEvents):
    """The Generate tab's events."""

    def run_and_checkpoint(self, run: str, checkpoint):
        """The run dropdown (the runs there are now) and the checkpoint dropdown (that run's), set."""
        gr = self.gr
        runs_now = gr.update(choices=[NONE, *self.backend.runs()], value=run)
        ckpts = [] if run == NONE else weights_choices(self.backend.projects.run(run))
        return runs_now, gr.update(choices=ckpts, value=checkpoint)

    def on_run(self, name):
        if not name or name == NONE:
            return self.gr.update(choices=[], value=None)
        try:
            choices = weights_choices(self.backend.projects.run(name))
        except UserError as e:
            raise self.refused(e) from None
        return self.gr.update(choices=choices, value=choices[0] if choices else None)

    def on_generate(self, *values):
        *form_values, n = values
        form = form_of(form_values)
        form["num_images"] = n
        try:
            recs = self.backend.generate(form)
        except UserError as e:
            raise self.refused(e) from None
        items = [(r["path"], caption(r["settings"])) for r in recs]
        first = recs[0]["settings"]
        return items, recs, 0, first["seed"], settings_text(recs[0])

    def on_send(self, recs, i):
        """The selected image's settings, into the form."""
        if i is None or not recs or not 0 <= i < len(recs):
            raise self.gr.Error("select an image first")
        r = recs[i]
        run, checkpoint = self.run_and_checkpoint(r["run"], r["checkpoint"] or None)
        fields = {**r["settings"], "prompt": r["prompt"], "model": r["model"], "run": run, "checkpoint": checkpoint}
        return tuple(fields[key] for key in FORM_KEYS)

    def on_png(self, file):
        """A PNG's settings into the form (what it does not say is left as it is), and a note."""
        gr = self.gr
        if file is None:
            return (*[gr.update()] * len(FORM_KEYS), "")
        try:
            form, note = self.backend.form_of_png(file if isinstance(file, str) else file.name)
        except UserError as e:
            return (*[gr.update()] * len(FORM_KEYS), f"⚠️ {e}")
        run, checkpoint = self.run_and_checkpoint(form["run"], form["checkpoint"])
        fields = {**form, "run": run, "checkpoint": checkpoint}
        values = [fields[key] if key in fields else gr.update() for key in FORM_KEYS]
        return (*values, "settings loaded" + (f" (not taken: {note})" if note else ""))


def _wire(gr, ev: GenerateEvents, w: SimpleNamespace, form_inputs: list) -> None:
    w.run.input(ev.on_run, w.run, w.checkpoint)  # (not .change: a form filled by send or a PNG sets both)
    w.generate.click(
        ev.on_generate,
        [*form_inputs, w.num_images],
        [w.gallery, w.records, w.selected, w.last_seed, w.info],
        concurrency_id="engine",
        concurrency_limit=1,
    )

    # Here, not a method: Gradio passes the event's data by this annotation, and gr is imported late
    def on_select(recs, evt: gr.SelectData):
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        return i, settings_text(recs[i]) if 0 <= i < len(recs) else ""

    w.gallery.select(on_select, w.records, [w.selected, w.info])
    w.send.click(ev.on_send, [w.records, w.selected], form_inputs)
    w.png.upload(ev.on_png, w.png, [*form_inputs, w.png_note])
    w.random_seed.click(lambda: -1, None, w.seed)
    w.reuse_seed.click(lambda s: -1 if s is None else s, w.last_seed, w.seed)
    w.refresh_runs.click(lambda: gr.update(choices=[NONE, *ev.backend.runs()]), None, w.run)
