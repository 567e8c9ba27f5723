"""Generation's samplers by name: diffusers' scheduler class and the options that make it that sampler,
on a model's own noise schedule. The UNet families (DDPM-trained) take any of SCHEDULERS; the
flow-matching families take FLOW_SCHEDULERS."""

from __future__ import annotations

from typing import Any

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
}
# Flow matching: Euler on the flow's ODE (the models' own sampler) and Heun's second-order version.
FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
SAMPLER_NAMES = tuple(dict.fromkeys([*SCHEDULERS, *FLOW_SCHEDULERS]))
ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
GUIDANCE_RESCALE = 0.7  # Lin et al., 2024, section 3.4
