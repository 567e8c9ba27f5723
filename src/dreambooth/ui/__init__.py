"""`dreambooth ui`: the local web UI (Gradio). projects and supervisor import no Gradio."""
