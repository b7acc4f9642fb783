"""Training checkpoints of the shipped models: `english@1200` is the English model as it was after step 1,200.

A trained shipped model's folder holds snapshots of its run, `checkpoints/step-NNNNNN.safetensors`
(written by `workbench.train`: fp16, or int8 rows with a scale each where fp16 would not fit the
size the repository allows), beside the final weights. Opening one builds, once, a Hugging Face
folder in the user's cache (the shipped config and tokenizer, the snapshot's weights in float32)
and loads it like any model, so every view works on it unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workbench.errors import InputError

SEPARATOR = "@"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def split_name(name: str) -> tuple[str, int] | None:
    """("english", 1200) for "english@1200"; None for a name without a step."""
    if SEPARATOR not in name:
        return None
    base, _, step = name.rpartition(SEPARATOR)
    if not step.strip().isdigit():
        raise InputError(f"'{name}': a checkpoint is named MODEL@STEP with a whole number of steps, e.g. '{base or 'english'}@1200'")
    return base.strip(), int(step)


def steps(folder: Path) -> list[int]:
    """The training steps at which `folder` has a snapshot, in order (empty for a model without)."""
    return sorted(int(p.stem.split("-")[1]) for p in (folder / "checkpoints").glob("step-*.safetensors"))


SCALE_SUFFIX = ".int8_row_scale"  # written by workbench.train.common.snapshot_tensors


def weights(snapshot: Path) -> dict[str, torch.Tensor]:
    """A snapshot's state dict in float32: fp16 tensors widened, int8 rows times their scales."""
    stored = load_file(str(snapshot))
    out = {}
    for name, t in stored.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = stored.get(name + SCALE_SUFFIX)
        out[name] = t.float() * scale.float()[:, None] if scale is not None else t.float()
    return out


def cache_root() -> Path:
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")) / "checkpoints"


def folder_for(name: str, folder: Path, step: int) -> Path:
    """The loadable folder of `folder`'s snapshot at `step`, built in the cache the first time."""
    available = steps(folder)
    if step not in available:
        if not available:
            raise InputError(f"'{name}' has no training checkpoints: open it without '@{step}'")
        listed = ", ".join(str(s) for s in available)
        raise InputError(f"'{name}' has checkpoints at steps {listed}; {step} is not one of them")
    snapshot = folder / "checkpoints" / f"step-{step:06d}.safetensors"
    digest = hashlib.sha256(snapshot.read_bytes()).hexdigest()[:12]
    out = cache_root() / f"{name}{SEPARATOR}{step}-{digest}"
    if (out / "model.safetensors").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "config.json", tmp / "config.json")
    for file in TOKENIZER_FILES:
        if (folder / file).exists():
            shutil.copy(folder / file, tmp / file)
    tensors = weights(snapshot)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    try:
        os.replace(tmp, out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
