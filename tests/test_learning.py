"""The tiny model really learns the subject: the denoising loss on the instance photos, at fixed noise
and timesteps, falls well below its value before training.

Measured here (2 CPU cores, ~25 s): 400 steps, lr 1e-3, LoRA rank 4 on the default attention
targets (to_q, to_k, to_v, to_out.0), 4 photos at 64 px: 1.129 -> 0.718. With --lora-targets
attn,ff,proj,conv the same run reaches 0.366; full fine-tuning, 300 steps, 0.096.
"""

from dreambooth.data.images import list_images
from dreambooth.evaluation.denoising import fixed_noise_loss
from dreambooth.models import load_pipeline
from dreambooth.training.loop import train


def test_lora_dreambooth_learns_the_instance_photos(make_cfg, tiny_model, instance_dir):
    cfg = make_cfg(max_steps=400, rank=4, learning_rate=1e-3, lr_scheduler="constant")
    out = train(cfg, progress=False)
    photos = list_images(instance_dir)
    base = load_pipeline(str(tiny_model))
    before = fixed_noise_loss(base, photos, cfg.instance_prompt, 64)
    tuned = load_pipeline(str(tiny_model))
    tuned.load_lora_weights(out)
    after = fixed_noise_loss(tuned, photos, cfg.instance_prompt, 64)
    assert after < 0.8 * before, (before, after)
    # and the LoRA at scale 0 is the base model again
    tuned.set_adapters(tuned.get_list_adapters()["unet"], adapter_weights=0.0)
    assert abs(fixed_noise_loss(tuned, photos, cfg.instance_prompt, 64) - before) < 1e-5
