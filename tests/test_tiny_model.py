import json

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from dreambooth.cli import main
from dreambooth.tiny import CORPUS


def test_tiny_model_loads_in_stock_diffusers_and_generates(tmp_path):
    out = tmp_path / "tiny"
    assert main(["tiny-model", str(out), "--seed", "3"]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.safety_checker is None
    images = pipe(
        "a photo of sks cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all() and images.std() > 0


def test_tokenizer_is_a_real_clip_bpe_matching_the_text_model(tiny_model):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    tok, cfg = pipe.tokenizer, pipe.text_encoder.config
    vocab = json.loads((tiny_model / "tokenizer" / "vocab.json").read_text())
    assert tok.bos_token_id == cfg.bos_token_id == vocab["<|startoftext|>"]
    assert tok.eos_token_id == cfg.eos_token_id == cfg.pad_token_id == vocab["<|endoftext|>"]
    assert len(tok) == cfg.vocab_size
    for word in CORPUS.split():
        assert tok.tokenize(word) == [word + "</w>"], word
    ids = tok("a photo of sks dog", padding="max_length", max_length=77).input_ids
    assert ids[0] == tok.bos_token_id and ids[6] == tok.eos_token_id and len(ids) == 77
    # Words outside the corpus still tokenize, through byte-level pieces, never to <unk>.
    pieces = tok.tokenize("xylophone")
    assert len(pieces) > 1 and "".join(pieces) == "xylophone</w>"


def test_tiny_model_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["tiny-model", str(tmp_path)]) == 2
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
