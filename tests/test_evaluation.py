"""`dreambooth evaluate` with tiny random extractors, offline."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.cli import main
from dreambooth.demo import example_subject
from dreambooth.evaluation.extractors import ClipExtractor, DinoExtractor


def evaluate(extractors, *args) -> int:
    dino, clip = extractors
    return main(["evaluate", "--dino-model", str(dino), "--clip-model", str(clip), *args])


def test_an_image_identical_to_the_real_one_scores_one(extractors, tmp_path):
    real, gen = tmp_path / "real", tmp_path / "gen"
    real.mkdir()
    gen.mkdir()
    shutil.copy(example_subject() / "00.jpg", real / "a.jpg")
    shutil.copy(example_subject() / "00.jpg", gen / "b.jpg")
    assert (
        evaluate(
            extractors,
            "--real",
            str(real),
            "--generated",
            str(gen),
            "--prompt",
            "a photo of sks dog",
            "--output-dir",
            str(tmp_path / "out"),
        )
        == 0
    )
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["dino"] == pytest.approx(1.0, abs=1e-6) and m["clip_i"] == pytest.approx(1.0, abs=1e-6)
    assert m["n_real"] == 1 and m["n_generated"] == 1
    # one image per prompt: no pair to measure diversity on, and the reason is given
    assert "div" not in m and m["div_unavailable"]
    assert (tmp_path / "out" / "per_prompt.csv").read_text().startswith("prompt,images,dino,clip_i,clip_t")
    assert "| DINO (higher is better) | 1.000 |" in (tmp_path / "out" / "metrics.md").read_text()


def test_order_and_batch_size_do_not_change_embeddings(extractors):
    paths = sorted(example_subject().glob("*.jpg"))
    for cls, model in zip((DinoExtractor, ClipExtractor), extractors):
        ex = cls(str(model))
        a = ex.embed_files(paths, batch_size=4)
        b = cls(str(model)).embed_files(paths[::-1], batch_size=1).flip(0)
        assert torch.allclose(a, b, atol=1e-5)


def test_embeddings_are_cached_by_file_content(extractors, tmp_path):
    paths = sorted(example_subject().glob("*.jpg"))
    ex = DinoExtractor(str(extractors[0]), tmp_path / "cache")
    first = ex.embed_files(paths[:2])
    assert ex.computed == 2
    again = DinoExtractor(str(extractors[0]), tmp_path / "cache")
    both = again.embed_files(paths)
    assert again.computed == 2 and torch.equal(both[:2], first)  # only the two new images


def test_clip_t_equals_torchmetrics_clipscore(extractors):
    from torchmetrics.functional.multimodal import clip_score
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from transformers import CLIPModel, CLIPProcessor

    from dreambooth.evaluation.metrics import clip_t_scores

    class Compat(CLIPModel):
        # torchmetrics 1.9 expects the tensors transformers 4 returned; transformers 5 returns
        # them as pooler_output. Same model, same maths.
        def get_image_features(self, *a, **k):
            return super().get_image_features(*a, **k).pooler_output

        def get_text_features(self, *a, **k):
            return super().get_text_features(*a, **k).pooler_output

    clip = extractors[1]
    model, processor = Compat.from_pretrained(clip), CLIPProcessor.from_pretrained(clip)
    paths = sorted(example_subject().glob("*.jpg"))[:3]
    prompts = ["a photo of dog", "a dog in the jungle", "a red dog"]
    tensors = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]
    ours = ClipExtractor(str(clip))
    mine = clip_t_scores(ours.embed_files(paths), ours.embed_texts(prompts)).float()
    theirs, _ = _clip_score_update(tensors, prompts, model, processor)  # 100 * cosine, per image
    assert torch.allclose(mine * 100, theirs.detach(), atol=1e-3)
    # CLIPScore clamps its mean at 0; CLIP-T does not (random models give negative cosines).
    public = clip_score(tensors, prompts, model_name_or_path=lambda: (model, processor))
    assert float(public.detach()) == pytest.approx(max(float(mine.mean()) * 100, 0.0), abs=1e-3)


def test_the_whole_protocol_on_two_dreambench_subjects(tiny_model, lora_with_te, extractors, tmp_path, monkeypatch):
    import dreambooth.generation as generation

    renders = []
    real_render = generation.Engine.render
    monkeypatch.setattr(generation.Engine, "render", lambda self, b: renders.append(len(b)) or real_render(self, b))
    for subject, noun, n_prompts in (("dog", "dog", 25), ("teapot", "teapot", 25)):
        real = example_subject().parent / subject
        out = tmp_path / subject
        args = [
            "--model",
            str(tiny_model),
            "--lora",
            str(lora_with_te),
            "--real",
            str(real),
            "--class-noun",
            noun,
            "--identifier",
            "sks",
            "--steps",
            "2",
            "--images-per-prompt",
            "2",
            "--num-class-images",
            "3",
            "--output-dir",
            str(out),
        ]
        renders.clear()
        assert evaluate(extractors, *args) == 0
        assert sum(renders) == n_prompts * 2 + 3
        m = json.loads((out / "metrics.json").read_text())
        assert m["n_generated"] == 50 and m["n_class"] == 3 and m["n_prompts"] == 25
        assert all(-1 <= m[k] <= 1 for k in ("dino", "clip_i", "clip_t", "pres"))
        prompts = (out / "per_prompt.csv").read_text()
        assert ("wearing a santa hat" in prompts) == (noun == "dog")  # live vs object prompt sets
        renders.clear()
        assert evaluate(extractors, *args) == 0  # resumed: every image is reused
        assert renders == [] and json.loads((out / "metrics.json").read_text()) == m


@pytest.mark.parametrize("case", ["empty real", "not an image", "no prompts", "unknown extractor", "nothing to score"])
def test_bad_evaluate_input(extractors, tmp_path, capsys, case):
    real, gen = tmp_path / "real", tmp_path / "gen"
    real.mkdir()
    gen.mkdir()
    shutil.copy(example_subject() / "00.jpg", gen / "x.jpg")
    args = ["--real", str(real), "--generated", str(gen), "--output-dir", str(tmp_path / "out")]
    named = "--real"
    if case != "empty real":
        shutil.copy(example_subject() / "01.jpg", real / "r.jpg")
    if case == "not an image":
        (gen / "y.png").write_text("text")
        named = "y.png"
    elif case == "no prompts":
        named = "no prompt recoverable"
    elif case == "unknown extractor":
        args += ["--prompt", "p"]
        dino, _ = extractors
        rc = main(["evaluate", "--dino-model", str(tmp_path / "nope"), "--clip-model", str(extractors[1]), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--dino-model" in err[0]
        return
    elif case == "nothing to score":
        args = ["--real", str(real)]
        named = "--generated"
    rc = evaluate(extractors, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and named in err[0], err
    assert not (tmp_path / "out").exists()
