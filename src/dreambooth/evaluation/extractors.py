"""Feature extractors for the metrics: DINO ViT (CLS token) and CLIP (image and text), loaded through
transformers from a hub id or a local folder; LPIPS through the lpips package where it runs.

Image embeddings are cached by the image file's content hash and the extractor, so scoring a folder
again after adding images embeds only the new ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image

from ..data.images import load_rgb
from ..data.pixels import resize_and_crop
from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _features(out) -> torch.Tensor:
    """transformers 5 returns the projected features as pooler_output; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _load(cls, model_id: str, flag: str):
    from ..models import quiet_libraries

    quiet_libraries()
    try:
        return cls.from_pretrained(model_id)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{flag} {model_id}: could not be loaded ({str(e).splitlines()[0][:200]})") from None


class Extractor:
    """Embeds images in batches, with a cache by file hash."""

    id: str

    def __init__(self, cache_dir: Path | None, device: str):
        self.cache_dir, self.device = cache_dir, device
        self._cache: dict[str, torch.Tensor] | None = None

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        name = hashlib.sha256(self.id.encode()).hexdigest()[:16]
        return Path(self.cache_dir) / f"{name}.safetensors"

    def _load_cache(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            from safetensors.torch import load_file

            f = self._cache_file()
            self._cache = dict(load_file(str(f))) if f is not None and f.exists() else {}
        return self._cache

    def _save_cache(self) -> None:
        from safetensors.torch import save_file

        from ..io import atomic_path

        f = self._cache_file()
        if f is None:
            return
        with atomic_path(f) as tmp:
            save_file({k: v.contiguous() for k, v in self._cache.items()}, str(tmp), metadata={"extractor": self.id})

    @torch.no_grad()
    def embed_files(self, paths: list[Path], batch_size: int = 16) -> torch.Tensor:
        """(N, D) embeddings of the image files, computing only those not cached."""
        cache = self._load_cache()
        keys = [file_hash(p) for p in paths]
        missing = [(k, p) for k, p in dict(zip(keys, paths)).items() if k not in cache]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            emb = self.embed_images([load_rgb(p) for _, p in chunk]).float().cpu()
            for (k, _), e in zip(chunk, emb):
                cache[k] = e.clone()
        if missing:
            self._save_cache()
        self.computed = len(missing)
        return torch.stack([cache[k] for k in keys])

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError


class DinoExtractor(Extractor):
    """DINO ViT CLS token, preprocessed as public DreamBench reimplementations do: resize the
    shorter side to 256 (bicubic), centre crop 224, ImageNet normalisation."""

    def __init__(self, model_id: str, cache_dir: Path | None = None, device: str = "cpu"):
        from transformers import ViTModel

        super().__init__(cache_dir, device)
        self.id = f"dino:{model_id}"
        self.model = _load(ViTModel, model_id, "--dino-model").to(device).eval()
        self.crop = int(self.model.config.image_size)
        self.resize = round(self.crop * 256 / 224)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        out = []
        for im in images:
            w, h = im.size
            s = self.resize / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
            left, top = (im.width - self.crop) // 2, (im.height - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(self.crop, self.crop, 3)
            out.append((x.permute(2, 0, 1).float() / 255 - mean) / std)
        return torch.stack(out)  # (B, 3, 224, 224)

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        x = self.preprocess(images).to(self.device)
        return self.model(pixel_values=x).last_hidden_state[:, 0]  # CLS token, (B, D)


class ClipExtractor(Extractor):
    """CLIP image and text embeddings (projected), with the model's own processor."""

    def __init__(self, model_id: str, cache_dir: Path | None = None, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        super().__init__(cache_dir, device)
        self.id = f"clip:{model_id}"
        self.model = _load(CLIPModel, model_id, "--clip-model").to(device).eval()
        self.processor = _load(CLIPProcessor, model_id, "--clip-model")

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        x = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return _features(self.model.get_image_features(pixel_values=x))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        t = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        return (
            _features(
                self.model.get_text_features(
                    input_ids=t["input_ids"].to(self.device), attention_mask=t["attention_mask"].to(self.device)
                )
            )
            .float()
            .cpu()
        )


def lpips_distances(groups: list[list[Path]], size: int = 256) -> tuple[list[torch.Tensor] | None, str | None]:
    """Pairwise LPIPS (AlexNet) distances within each group, or (None, why it cannot be computed)."""
    try:
        import lpips  # needs torchvision and AlexNet's ImageNet weights
    except Exception as e:  # noqa: BLE001 - any import failure means: unavailable, and why
        return None, f"the lpips package cannot be imported ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    try:
        net = lpips.LPIPS(net="alex", verbose=False)
    except Exception as e:  # noqa: BLE001 - weights not downloadable offline, for one
        return None, f"LPIPS weights are not available ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    out = []
    with torch.no_grad():
        for paths in groups:
            x = torch.stack([_to_lpips(p, size) for p in paths])
            n = len(paths)
            d = torch.zeros(n, n)
            for i in range(n):
                for j in range(i + 1, n):
                    d[i, j] = d[j, i] = net(x[i : i + 1], x[j : j + 1]).flatten()[0]
            out.append(d)
    return out, None


def _to_lpips(path: Path, size: int) -> torch.Tensor:
    im = resize_and_crop(load_rgb(path), size)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1
