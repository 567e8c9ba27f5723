"""The Train tab: a new run's photos and settings; its progress, loss and validation images while it
trains; stop with a checkpoint, resume."""

import itertools
from types import SimpleNamespace

from ..errors import UserError
from .backend import Backend
from .projects import TrainForm, default_prompts
from .tab_common import TabEvents, said, tail

# The train form's components, in the order on_start takes their values
START_INPUTS = (
    "name",
    "photos",
    "folder",
    "model",
    "identifier",
    "class_noun",
    "instance_prompt",
    "class_prompt",
    "method",
    "steps",
    "lr",
    "prior",
    "num_class",
    "resolution",
    "every",
    "text_encoder",
)


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the window - 1 before it (fewer at the start)."""
    sums = list(itertools.accumulate(values, initial=0.0))
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def loss_plot(losses: list[tuple[int, float]], title: str, validation: list[tuple[int, float]] | None = None):
    """The loss over steps with its running mean, and the validation loss where the run logs one
    (Pillow; no plotting library)."""
    from ..evaluation.plot import line_plot

    window = max(1, len(losses) // 20)
    smooth = list(zip((step for step, _ in losses), running_mean([v for _, v in losses], window)))
    series = {"loss": losses} if len(losses) <= 50 else {f"loss (mean of {window})": smooth}
    if validation:
        series["validation loss (fixed noise)"] = validation
    return line_plot(series, title, "step")


def status_line(name: str, v) -> str:
    total = v.max_steps or 0
    pct = f" ({100 * v.step / total:.0f} %)" if total else ""
    last = f", loss {v.losses[-1][1]:.4f}" if v.losses else ""
    ckpt = f", checkpoints at {', '.join(str(s) for s in v.checkpoints)}" if v.checkpoints else ""
    return f"**{name}**: {v.status} · step {v.step}/{total or '?'}{pct}{last}{ckpt}"


def train_form(v: dict) -> TrainForm:
    """The form's values (by START_INPUTS name) as the backend takes them; blanks as their defaults."""
    return TrainForm(
        name=v["name"] or "",
        identifier=v["identifier"] or "",
        class_noun=v["class_noun"] or "",
        instance_prompt=v["instance_prompt"] or "",
        class_prompt=v["class_prompt"] or "",
        photos_folder=v["folder"] or "",
        method=v["method"],
        max_steps=int(v["steps"] or 0),
        learning_rate=float(v["lr"] or 0),
        prior=bool(v["prior"]),
        num_class_images=int(v["num_class"] or 0),
        resolution=int(v["resolution"] or 0) or None,
        checkpoint_every=int(v["every"] or 0) or None,
        train_text_encoder=bool(v["text_encoder"]),
    )


def train_tab(gr, backend: Backend, timer):
    """The Train tab: a new run's form, and the monitor of a run (progress, loss, validation images)."""
    with gr.Tab("Train", id="train"):
        with gr.Row():
            w = _form_column(gr, backend)
            _monitor_column(gr, backend, w)
        w.shown = gr.State(None)  # what the monitor shows, so a tick changes only what changed
    _wire(gr, TrainEvents(gr, backend), w, timer)
    return w.run


def _form_column(gr, backend: Backend) -> SimpleNamespace:
    """A new run's form (its components named as START_INPUTS), its start button and message."""
    from ..methods import METHODS  # (imports torch)

    methods = list(METHODS)
    w = SimpleNamespace()
    with gr.Column():
        w.name = gr.Textbox(label="Run name", elem_id="train-name")
        w.photos = gr.File(
            label="Photos of the subject (3-5)",
            file_count="multiple",
            file_types=["image"],
            elem_id="train-photos",
        )
        w.folder = gr.Textbox(label="...or a folder of photos inside the projects folder", elem_id="train-folder")
        w.model = gr.Textbox(label="Base model", value=backend.model or "", elem_id="train-model")
        with gr.Row():
            w.identifier = gr.Textbox(value="sks", label="Identifier", elem_id="train-identifier")
            w.class_noun = gr.Textbox(label="Class noun", placeholder="cat", elem_id="train-class")
        w.instance_prompt = gr.Textbox(label="Instance prompt", elem_id="train-instance-prompt")
        w.class_prompt = gr.Textbox(label="Class prompt", elem_id="train-class-prompt")
        # The default is the method registered first (LoRA)
        w.method = gr.Radio(methods, value=methods[0], label="Method", elem_id="train-method")
        with gr.Row():
            w.steps = gr.Number(1000, label="Steps", precision=0, elem_id="train-steps")
            w.lr = gr.Number(1e-4, label="Learning rate", elem_id="train-lr")
        with gr.Row():
            w.prior = gr.Checkbox(True, label="Prior preservation", elem_id="train-prior")
            w.num_class = gr.Number(100, label="Class images", precision=0, elem_id="train-num-class")
        with gr.Accordion("More", open=False):
            w.resolution = gr.Number(0, label="Resolution (0: the model's)", precision=0, elem_id="train-res")
            w.every = gr.Number(
                0, label="Checkpoint every (0: a quarter of the steps)", precision=0, elem_id="train-every"
            )
            w.text_encoder = gr.Checkbox(False, label="Train the text encoder (LoRA)", elem_id="train-te")
        w.start = gr.Button("Start training", variant="primary", elem_id="train-start")
        w.message = gr.Markdown(elem_id="train-message")
    return w


def _monitor_column(gr, backend: Backend, w: SimpleNamespace) -> None:
    """A run's status, stop and resume, loss, validation images and log."""
    runs = backend.runs()
    with gr.Column():
        with gr.Row():
            w.run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", elem_id="run-select")
            w.refresh = gr.Button("↻", scale=0, min_width=40, elem_id="run-refresh")
        w.status = gr.Markdown(elem_id="run-status")
        with gr.Row():
            w.stop = gr.Button("Stop (with a checkpoint)", elem_id="run-stop")
            w.resume = gr.Button("Resume", elem_id="run-resume")
        w.loss = gr.Image(label="Loss", type="pil", elem_id="run-loss")
        w.validation = gr.Gallery(label="Validation images", columns=4, elem_id="run-validation")
        w.log = gr.Textbox(label="Log (last lines)", lines=6, elem_id="run-log")


class TrainEvents(TabEvents):
    """The Train tab's events."""

    @staticmethod
    def fill_prompts(identifier, noun):
        return default_prompts(identifier, noun)

    def on_start(self, *values):
        v = dict(zip(START_INPUTS, values))
        form = train_form(v)
        uploads = [p if isinstance(p, str) else getattr(p, "name", str(p)) for p in v["photos"] or []]
        try:
            started = self.backend.start_training(form, v["model"], uploads)
        except UserError as e:
            return f"⚠️ {e}", self.gr.update(), self.gr.update()
        choices = self.backend.runs()
        return f"started **{started}**", self.gr.update(choices=choices, value=started), None

    def monitor(self, name, before):
        """The run's status line, loss plot, validation images and log; `before` is what is shown."""
        keep = self.gr.update  # (a fresh update for each output)
        if not name:
            return "no run selected", keep(), keep(), keep(), before
        try:
            folder, v = self.backend.status(name)
        except UserError as e:
            return f"⚠️ {e}", keep(), keep(), keep(), before
        # The loss plot is redrawn about 200 times over a run (each image sent is a file in Gradio's cache)
        every = max(1, (v.max_steps or 1000) // 200)
        key = (name, v.status, len(v.losses) // every, v.validation_step, len(v.validation_images))
        log_text = tail(folder / "train.log")
        if before == key:
            return status_line(name, v), keep(), keep(), log_text, before
        plot = loss_plot(v.losses, f"loss · {name}", v.validation_losses) if len(v.losses) >= 2 else None
        images = [(str(p), f"step {v.validation_step} · {p.stem}") for p in v.validation_images]
        return status_line(name, v), plot, images, log_text, key

    def on_stop(self, name):
        return said(lambda: self.backend.stop(name), f"stopping **{name}** after its step (it saves a checkpoint)")

    def on_resume(self, name):
        return said(lambda: self.backend.resume(name), f"resumed **{name}**")


def _wire(gr, ev: TrainEvents, w: SimpleNamespace, timer) -> None:
    prompts = [w.instance_prompt, w.class_prompt]
    w.identifier.change(ev.fill_prompts, [w.identifier, w.class_noun], prompts)
    w.class_noun.change(ev.fill_prompts, [w.identifier, w.class_noun], prompts)
    w.start.click(ev.on_start, [getattr(w, key) for key in START_INPUTS], [w.message, w.run, w.shown])

    monitor_out = [w.status, w.loss, w.validation, w.log, w.shown]
    w.run.change(lambda n: ev.monitor(n, None), w.run, monitor_out)
    w.refresh.click(lambda: gr.update(choices=ev.backend.runs()), None, w.run)
    timer.tick(ev.monitor, [w.run, w.shown], monitor_out, show_progress="hidden")
    w.stop.click(ev.on_stop, w.run, w.message)
    w.resume.click(ev.on_resume, w.run, w.message)
