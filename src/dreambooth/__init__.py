"""DreamBooth: teach a text-to-image diffusion model a new subject from a few photos."""

import logging as _logging

__version__ = "0.1.0"

# torchao (--quantize-base) announces at import, through these loggers, the CUDA kernels and Triton a CPU
# machine lacks, whenever diffusers or transformers import it; our own lines say what matters.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
