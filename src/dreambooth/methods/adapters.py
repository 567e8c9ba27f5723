"""The adapter types LoRA training can put on the model (--adapter), registered by name: each builds
its peft config, names the tensors it trains, and says how its file is written and what it combines
with. Adding one is a class here and an entry in ADAPTERS."""

from __future__ import annotations


class Adapter:
    name = "base"
    markers: tuple[str, ...] = ()  # what its trained parameters' names hold (peft's)
    lycoris = False  # written in LyCORIS's layout (kohya's names), which stock diffusers cannot load
    lora_only_options = True  # DoRA and --init-lora apply to it

    @staticmethod
    def config(rank: int, alpha: float, dropout: float, targets: list[str], use_dora: bool):
        raise NotImplementedError


class LoRA(Adapter):
    """Low-rank adapters (Hu et al., 2022): delta W = up @ down x alpha / r; peft's LoraConfig."""

    name, markers = "lora", ("lora_",)

    @staticmethod
    def config(rank, alpha, dropout, targets, use_dora):
        from peft import LoraConfig

        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                          target_modules=targets, use_dora=use_dora)  # fmt: skip


class LoHa(Adapter):
    """LyCORIS's Hadamard product of two low-rank pairs: rank r reaches r^2; peft's LoHaConfig."""

    name, markers, lycoris, lora_only_options = "loha", ("hada_",), True, False

    @staticmethod
    def config(rank, alpha, dropout, targets, use_dora):
        from peft import LoHaConfig

        return LoHaConfig(r=rank, alpha=alpha, module_dropout=dropout, target_modules=targets)


class LoKr(Adapter):
    """LyCORIS's Kronecker product of two small factors; peft's LoKrConfig."""

    name, markers, lycoris, lora_only_options = "lokr", ("lokr_",), True, False

    @staticmethod
    def config(rank, alpha, dropout, targets, use_dora):
        from peft import LoKrConfig

        return LoKrConfig(r=rank, alpha=alpha, module_dropout=dropout, target_modules=targets)


ADAPTERS: dict[str, type[Adapter]] = {a.name: a for a in (LoRA, LoHa, LoKr)}
TRAINED_MARKERS = tuple(m for a in ADAPTERS.values() for m in a.markers)
