"""The Grid tab: X/Y over any setting, the Generate form's values for the rest, filled in cell by cell."""

from ..errors import UserError
from .backend import GRID_AXES, NONE, Backend
from .tab_common import TabEvents
from .tab_generate import GenerateForm


def grid_tab(gr, backend: Backend, form: GenerateForm) -> None:
    """The Grid tab: X/Y over any setting, the Generate form's values for the rest, filled in cell by cell."""
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

    grid_button.click(
        GridEvents(gr, backend, form).on_grid,
        [x_name, x_values, y_name, y_values, *form.inputs],
        [grid_image, grid_status],
        concurrency_id="engine",
        concurrency_limit=1,
    )


class GridEvents(TabEvents):
    """The Grid tab's event: the grid, as each of its cells is generated."""

    def __init__(self, gr, backend: Backend, form: GenerateForm):
        super().__init__(gr, backend)
        self.form = form

    def on_grid(self, xn, xv, yn, yv, *values):
        form = self.form.of(values)
        try:
            for image, done, total in self.backend.grid(form, (xn, xv), (yn, yv)):
                yield image, f"{done}/{total} cells" + (" · done" if done == total else "")
        except UserError as e:
            raise self.refused(e) from None
