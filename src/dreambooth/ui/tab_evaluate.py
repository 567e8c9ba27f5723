"""The Evaluate tab: score a run's checkpoints with `dreambooth select`; its table, plots and
recommendation."""

from types import SimpleNamespace

from ..errors import UserError
from .backend import Backend
from .projects import active
from .tab_common import TabEvents, said, tail


def evaluate_tab(gr, backend: Backend, timer):
    """The Evaluate tab: score a run's checkpoints (dreambooth select), see its table and recommendation."""
    with gr.Tab("Evaluate", id="evaluate"):
        gr.Markdown(
            "A run's scores from `dreambooth select --run RUN` (DINO, CLIP-I, CLIP-T, PRES of every checkpoint) "
            "and the checkpoint and settings it recommends."
        )
        w = SimpleNamespace()
        with gr.Row():
            w.run = gr.Dropdown(backend.runs(), label="Run", elem_id="eval-run")
            w.refresh = gr.Button("↻", scale=0, min_width=40, elem_id="eval-refresh")
        _score_form(gr, w)
        w.status = gr.Markdown(elem_id="eval-status")
        w.best = gr.Markdown(elem_id="eval-best")
        w.table = gr.Markdown(elem_id="eval-table")
        w.plots = gr.Gallery(label="Metrics over steps", columns=2, elem_id="eval-plots")
        w.shown = gr.State(None)
    _wire(gr, EvaluateEvents(gr, backend), w, timer)
    return w.run


def _score_form(gr, w: SimpleNamespace) -> None:
    """The extractors and sizes `dreambooth select` scores with, and its button."""
    with gr.Accordion("Score the run's checkpoints", open=False):
        with gr.Row():
            w.dino = gr.Textbox("facebook/dino-vits16", label="DINO model", elem_id="eval-dino")
            w.clip = gr.Textbox("openai/clip-vit-base-patch32", label="CLIP model", elem_id="eval-clip")
        with gr.Row():
            w.prompts = gr.Number(5, label="DreamBench prompts", precision=0, elem_id="eval-prompts")
            w.images = gr.Number(4, label="Images per prompt", precision=0, elem_id="eval-images")
            w.steps = gr.Number(30, label="Denoising steps", precision=0, elem_id="eval-steps")
        w.score = gr.Button("Score checkpoints (dreambooth select)", elem_id="eval-score")


class EvaluateEvents(TabEvents):
    """The Evaluate tab's events."""

    def on_eval(self, name):
        """The run's recommendation, its selection table and plots (from the files `select` wrote)."""
        from ..evaluation.select import selected

        if not name:
            return "", "", []
        try:
            folder = self.backend.projects.run(name)
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

    def on_score(self, name, dino, clip, n_prompts, n_images, n_steps):
        return said(
            lambda: self.backend.score(name, dino, clip, n_prompts or 0, n_images or 0, n_steps or 0),
            f"scoring **{name}**: `dreambooth select` started (its log: select.log)",
        )

    def eval_tick(self, name, before):
        """While a run is scored: its state and last log line; the table once its selection changes."""
        keep = self.gr.update  # (a fresh update for each output)
        if not name:
            return keep(), keep(), keep(), keep(), before
        try:
            folder = self.backend.projects.run(name)
        except UserError:
            return keep(), keep(), keep(), keep(), before
        state = self.backend.scoring.state(folder)
        selection = folder / "selection.json"
        key = (name, selection.stat().st_mtime_ns if selection.is_file() else None)
        status = keep()
        if active(state):
            status = f"scoring **{name}** · {tail(folder / 'select.log', 1)}"
        elif state:
            status = f"scoring **{name}**: {state}"
        if key == before or before is None:
            return status, keep(), keep(), keep(), key
        return status, *self.on_eval(name), key


def _wire(gr, ev: EvaluateEvents, w: SimpleNamespace, timer) -> None:
    w.run.change(ev.on_eval, w.run, [w.best, w.table, w.plots])
    w.refresh.click(lambda: gr.update(choices=ev.backend.runs()), None, w.run)
    w.score.click(ev.on_score, [w.run, w.dino, w.clip, w.prompts, w.images, w.steps], w.status)
    timer.tick(ev.eval_tick, [w.run, w.shown], [w.status, w.best, w.table, w.plots, w.shown], show_progress="hidden")
    w.run.change(lambda n: (None, ""), w.run, [w.shown, w.status])
