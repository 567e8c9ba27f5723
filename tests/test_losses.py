import torch
from diffusers import DDPMScheduler

from dreambooth.training.losses import diffusion_target, prior_preservation_loss


def test_prior_preservation_loss_matches_hand_computation():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0], [1.0, 1.0]]).view(4, 2, 1, 1)
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 3.0]]).view(4, 2, 1, 1)
    total, inst, prior = prior_preservation_loss(pred, target, n_instance=2, prior_weight=0.5)
    # instance rows: (1 + 4 + 1 + 1) / 4 = 1.75; class rows: (4 + 0 + 0 + 4) / 4 = 2.0
    assert inst.item() == 1.75
    assert prior.item() == 2.0
    assert total.item() == 1.75 + 0.5 * 2.0


def test_without_class_rows_the_loss_is_the_instance_mse():
    pred, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    total, inst, prior = prior_preservation_loss(pred, target, n_instance=2, prior_weight=1.0)
    assert total.item() == inst.item() == 1.0 and prior.item() == 0.0


def test_zero_prior_weight_gives_class_rows_no_gradient():
    pred = torch.randn(4, 4, 2, 2, requires_grad=True)
    total, _, _ = prior_preservation_loss(pred, torch.randn(4, 4, 2, 2), n_instance=2, prior_weight=0.0)
    total.backward()
    assert pred.grad[2:].abs().max() == 0 and pred.grad[:2].abs().max() > 0


def test_targets_follow_the_prediction_type():
    latents, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([10, 500, 990])
    eps = DDPMScheduler(prediction_type="epsilon")
    assert torch.equal(diffusion_target(eps, latents, noise, t), noise)
    v = DDPMScheduler(prediction_type="v_prediction")
    abar = v.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * latents  # Salimans & Ho (2022)
    assert torch.allclose(diffusion_target(v, latents, noise, t), expected, atol=1e-6)
