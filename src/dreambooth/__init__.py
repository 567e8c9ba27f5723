"""DreamBooth: teach a text-to-image diffusion model a new subject from a few photos."""

__version__ = "0.1.0"
