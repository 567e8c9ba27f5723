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


def test_min_snr_weights_match_the_paper_for_epsilon_and_v():
    from dreambooth.training.losses import min_snr_weights

    snr = torch.tensor([0.5, 5.0, 50.0])
    eps = min_snr_weights(snr, 5.0, "epsilon")
    assert torch.allclose(eps, torch.tensor([1.0, 1.0, 0.1]))  # min(SNR, 5) / SNR: the clean end counts less
    v = min_snr_weights(snr, 5.0, "v_prediction")
    assert torch.allclose(v, torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))


def test_weights_scale_each_example_of_its_own_half():
    pred, target = torch.zeros(4, 1, 1, 1), torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)
    w = torch.tensor([1.0, 0.5, 2.0, 0.0])
    total, inst, prior = prior_preservation_loss(pred, target, n_instance=2, prior_weight=1.0, weights=w)
    assert inst.item() == (1 * 1 + 4 * 0.5) / 2 and prior.item() == (9 * 2 + 16 * 0) / 2
    ones = prior_preservation_loss(pred, target, 2, 1.0, weights=torch.ones(4))
    assert all(a.item() == b.item() for a, b in zip(ones, prior_preservation_loss(pred, target, 2, 1.0)))


def test_offset_noise_is_one_constant_per_example_and_channel_and_splits_like_a_batch():
    from dreambooth.training.losses import offset_noise

    noise = torch.zeros(6, 4, 8, 8)
    out = offset_noise(noise, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out)) and 0.02 < out.abs().mean() < 0.2
    half = offset_noise(noise[2:4], 0.1, torch.Generator().manual_seed(0), rows=(2, 6))
    assert torch.equal(half, out[2:4])  # rows 2..3 of the same draw, as a second process takes them


def test_masked_loss_weighs_each_latent_cell_of_the_instance_examples_only():
    """--masked-loss: the instance MSE with each cell's squared error times its weight (every channel),
    the mean over all cells as kohya's trainers take it; all-ones weights change nothing; the class
    examples are never weighed."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    pixels = torch.tensor([[[[1.0, 0.1], [1.0, 0.1]]], [[[0.1, 0.1], [1.0, 1.0]]]])  # 2 instance examples
    total, inst, prior = prior_preservation_loss(pred, target, 2, 0.5, None, pixels)
    squared = (pred[:2] - target[:2]) ** 2
    assert torch.allclose(inst, (squared * pixels).mean())
    assert torch.allclose(prior, ((pred[2:] - target[2:]) ** 2).mean()) and torch.allclose(total, inst + 0.5 * prior)
    plain = prior_preservation_loss(pred, target, 2, 0.5)
    assert torch.allclose(prior_preservation_loss(pred, target, 2, 0.5, None, torch.ones(2, 1, 2, 2))[0], plain[0])
