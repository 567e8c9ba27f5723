"""A procedural world of coloured shapes, small enough to pretrain a diffusion model on a CPU, so that
DreamBooth's effect can be seen and measured without real base models (issue 6)."""
