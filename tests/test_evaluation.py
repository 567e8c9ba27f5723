"""`dreambooth evaluate` with tiny random extractors, offline."""

import csv
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


def _cos(a, b) -> np.ndarray:
    """Cosines of every row of a with every row of b, in float64 (numpy: independent of metrics.py)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _scores_from_scratch(extractors, real_dir, out, identifier):
    """The paper's metrics recomputed from the files an evaluation left: fresh extractors (no cache), each
    generated image's prompt from its JSON sidecar, scored without the identifier word. Returns the overall
    metrics and those of each prompt."""
    from dreambooth.data.images import list_images

    dino, clip = DinoExtractor(str(extractors[0])), ClipExtractor(str(extractors[1]))
    real, gen, klass = list_images(real_dir), list_images(out / "generated"), list_images(out / "class")
    prompts = [json.loads(p.with_suffix(".json").read_text())["prompt"] for p in gen]
    scored = [" ".join(w for w in prompt.split() if w != identifier) for prompt in prompts]
    assert all(identifier in p for p in prompts) and not any(identifier in p for p in scored)
    real_dino, gen_dino = dino.embed_files(real), dino.embed_files(gen)
    real_clip, gen_clip = clip.embed_files(real), clip.embed_files(gen)
    clip_t = np.diag(_cos(gen_clip, clip.embed_texts(scored)))  # image i with its own prompt
    total = {
        "dino": _cos(gen_dino, real_dino).mean(),  # generated against real, all pairs
        "clip_i": _cos(gen_clip, real_clip).mean(),
        "clip_t": clip_t.mean(),
        "pres": _cos(dino.embed_files(klass), real_dino).mean(),  # class images against real
    }
    per = {}
    for prompt in set(prompts):
        idx = [i for i, p in enumerate(prompts) if p == prompt]
        per[prompt] = {
            "images": len(idx),
            "dino": _cos(gen_dino[idx], real_dino).mean(),
            "clip_i": _cos(gen_clip[idx], real_clip).mean(),
            "clip_t": clip_t[idx].mean(),
        }
    return total, per


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
        # each metric is the mean cosine of the right sets of embeddings, recomputed apart (measured: equal to
        # 5e-9; counting the class images into DINO would move it by 7e-5, CLIP-T over all pairs by 2e-4)
        total, per = _scores_from_scratch(extractors, real, out, "sks")
        assert {k: m[k] for k in total} == pytest.approx(total, abs=1e-6)
        rows = list(csv.DictReader(open(out / "per_prompt.csv")))
        assert len(rows) == 25 and {r["prompt"] for r in rows} == set(per)
        for r in rows:  # (written to 6 decimals)
            assert {k: float(r[k]) for k in ("images", "dino", "clip_i", "clip_t")} == pytest.approx(
                per[r["prompt"]], abs=1e-6
            )
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
