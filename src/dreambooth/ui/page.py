"""The web UI's page (Gradio): four tabs whose events call ui.backend.Backend.

Generate (every setting, a run and its checkpoint, images with their settings, any image or PNG back
into the form), Grid (X/Y over any setting, filled in as it is generated), Train (a new run's photos
and settings; its progress, loss and validation images while it trains; stop with a checkpoint,
resume) and Evaluate (score a run's checkpoints with `dreambooth select`; its table, plots and
recommendation). Each tab is its module (ui.tab_*); this one puts them on one page.
"""

from .backend import NONE, Backend
from .tab_evaluate import evaluate_tab
from .tab_generate import generate_tab
from .tab_grid import grid_tab
from .tab_train import loss_plot, running_mean, train_tab

__all__ = ["build_app", "loss_plot", "running_mean", "theme"]


def build_app(backend: Backend):
    import gradio as gr

    # Gradio keeps every image it sends in its cache: files older than an hour go, checked every 30 minutes
    with gr.Blocks(title="dreambooth", delete_cache=(1800, 3600)) as app:
        gr.Markdown(f"## dreambooth · projects: `{backend.projects.root}`")
        timer = gr.Timer(1.0)  # the Train and Evaluate tabs follow their runs' files with it
        form = generate_tab(gr, backend)
        grid_tab(gr, backend, form)
        m_run = train_tab(gr, backend, timer)
        e_run = evaluate_tab(gr, backend, timer)

        def on_load():  # the runs as they are when the page opens, not when the UI started
            now = backend.runs()
            return gr.update(choices=[NONE, *now]), gr.update(choices=now), gr.update(choices=now)

        app.load(on_load, None, [form.run, m_run, e_run])
    return app


def theme():
    import gradio as gr

    # System fonts: the default theme fetches Google Fonts, and a local tool calls no one.
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
