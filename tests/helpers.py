"""Small helpers the tests share."""

from pathlib import Path


def lora_weights(output_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(output_dir) / "pytorch_lora_weights.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def dog_class_images(model, folder, indices) -> None:
    """Class images of "a photo of a dog" from the tiny model, as training makes them (2 steps, batch 4)."""
    from dreambooth.data.prior import generate_class_images
    from dreambooth.models import load_pipeline

    generate_class_images(
        load_pipeline(str(model)),
        "a photo of a dog",
        folder,
        list(indices),
        seed=0,
        steps=2,
        guidance=7.5,
        batch_size=4,
        resolution=64,
        progress=False,
    )


def wandb_records(path) -> list:
    """The records of a W&B run file (run-ID.wandb), read independently of wandb's own reader (which
    moved out of Python): a 7-byte header (':W&B', magic 0xBEE1, version), then LevelDB's log format
    (32 KiB blocks; each chunk a 4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last),
    each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B" and data[4:6] == b"\xe1\xbe", data[:7]
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def kill_at(moment: str, args: list[str], threads: int) -> None:
    """In a child process: run the CLI with one function ("module:attr.path:N") wrapped, wherever a loaded
    module of ours holds it, to SIGKILL the process on its N-th call (tests/test_kill.py)."""
    import importlib
    import os
    import signal
    import sys

    import torch

    torch.set_num_threads(threads)  # float sums, so images and weights, depend on it
    target, n = moment.rsplit(":", 1)
    module, name = target.split(":")
    owner = importlib.import_module(module)
    *path, attr = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    real, calls = getattr(owner, attr), [0]

    def wrapped(*a, **kw):
        calls[0] += 1
        if calls[0] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)

    setattr(owner, attr, wrapped)
    for mod in list(sys.modules.values()):  # where a module imported it by name already (the server's preload)
        if getattr(mod, "__name__", "").startswith("dreambooth") and getattr(mod, attr, None) is real:
            setattr(mod, attr, wrapped)
    from dreambooth.cli import main

    sys.exit(main(args))
