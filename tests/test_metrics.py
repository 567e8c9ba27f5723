"""Metric maths on made-up embeddings."""

import pytest
import torch

from dreambooth.evaluation.metrics import (
    clip_t_scores,
    dino_score,
    div_score,
    mean_pairwise_cosine,
    pres_score,
    strip_identifier,
)


def test_identical_embeddings_score_one_and_opposite_minus_one():
    a = torch.randn(1, 8)
    assert dino_score(a, a) == pytest.approx(1.0)
    assert mean_pairwise_cosine(a, -a) == pytest.approx(-1.0)


def test_mean_is_over_all_pairs():
    gen = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    real = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # cosines: row 0: 1, 1/sqrt2, 0; row 1: 0, 1/sqrt2, 1  -> mean (2 + sqrt2) / 6
    assert dino_score(gen, real) == pytest.approx((2 + 2**0.5) / 6)
    assert dino_score(gen[[1, 0]], real[[2, 0, 1]]) == pytest.approx(dino_score(gen, real))  # order-free


def test_clip_t_pairs_each_image_with_its_own_prompt():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert clip_t_scores(images, texts).tolist() == pytest.approx([1.0, 0.0])


def test_pres_is_class_images_against_real():
    real = torch.tensor([[1.0, 0.0]])
    assert pres_score(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), real) == pytest.approx(0.5)


def test_div_averages_the_upper_triangle_per_prompt():
    d1 = torch.tensor([[0.0, 0.2, 0.4], [0.2, 0.0, 0.6], [0.4, 0.6, 0.0]])
    d2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert div_score([d1, d2]) == pytest.approx((0.2 + 0.4 + 0.6 + 1.0) / 4)
    with pytest.raises(ValueError):
        div_score([torch.zeros(1, 1)])


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("a photo of sks dog in the jungle", "a photo of dog in the jungle"),
        ("a sks dog", "a dog"),
        ("sks", ""),
        ("a sksdog and a sks, dog", "a sksdog and a , dog"),
    ],
)
def test_identifier_is_removed_as_a_word(prompt, expected):
    assert strip_identifier(prompt, "sks") == expected
