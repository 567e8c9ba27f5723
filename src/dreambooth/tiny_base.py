"""The tiny models' shared parts: a real CLIP byte-level BPE tokenizer whose merges are learned here
from a small corpus (the prompts of DreamBench, the toy world and our examples: every corpus word is one
token, and any other text still tokenizes through the 256 byte symbols, as in CLIP), and the small UNet,
VAE and text-encoder configs (tiny.py, tiny_flow.py)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Words the tiny tokenizer knows as whole tokens.
CORPUS = """
a an the of in on at to with and or without for from by into is it its this that photo picture
rendering image close up view cropped dark bright good bad clean dirty small large big weird cool
nice jungle snow beach cobblestone street top pink fabric wooden floor city background mountain blue
house purple rug forest wheat field tree autumn leaves eiffel tower floating water ocean milk green
grass sunflowers around mirror sidewalk crowded dirt road white red shiny wet cube shaped wearing hat
santa rainbow scarf black monocle chef outfit firefighter police glasses yellow shirt wizard
backpack stuffed animal bowl can candle cat clock sneaker dog toy boot cartoon teapot vase plushie
bear berry duck monster sloth wolf robot car sunglasses poop emoji grey gray orange brown
circle square triangle star heart shape object striped dotted plain pattern color colored
sks zwx ohwx bucket sleeping sitting running painting style oil watercolor sketch drawing portrait
person man woman face product bottle cup shoe bag
"""

_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is a single symbol (ties broken by the pair's text)."""
    byte_map = bytes_to_unicode()
    seqs = {}
    for w in sorted(set(words)):
        chars = [byte_map[b] for b in w.encode("utf-8")]
        seqs[w] = chars[:-1] + [chars[-1] + "</w>"]
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for s in seqs.values():
            pairs.update(zip(s, s[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out


def write_clip_tokenizer(out: Path, extra_words: tuple[str, ...] = ()) -> dict[str, int]:
    """Write vocab.json, merges.txt and the tokenizer configs of a CLIP BPE tokenizer; return the vocab."""
    words = [w for w in re.findall(_SPLIT, (CORPUS + " " + " ".join(extra_words)).lower())]
    merges = learn_bpe(words)
    byte_symbols = list(bytes_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab_list += ["".join(m) for m in merges]
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}), encoding="utf-8"
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": EOS,
                "do_lower_case": True,
                "clean_up_tokenization_spaces": True,
            }
        ),
        encoding="utf-8",
    )
    return vocab


def unet_config(sample_size: int = 8) -> dict:
    """Cross-attention in every block and two transformer layers per attention block, so LoRA on
    attention reaches a real share of the weights (see tests/test_learning.py for the figures)."""
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        transformer_layers_per_block=2,
        norm_num_groups=16,
    )


def vae_config(sample_size: int = 64) -> dict:
    """Four blocks, as in Stable Diffusion: 8x spatial downsampling to 4 latent channels."""
    return dict(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.18215,
    )


def text_config(vocab: dict[str, int], **sizes) -> dict:
    """A CLIP text model's config whose bos/eos/pad ids are the tokenizer's (tiny unless sizes say)."""
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return dict(
        base | sizes,
        vocab_size=sizes.get("vocab_size", len(vocab)),
        max_position_embeddings=77,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
