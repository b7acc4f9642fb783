"""Where an intervention's values come from: the reference prompts and their mean activations (mean ablation),
the SAEs (feature edits), steering vectors (a difference of two prompt sets, or a saved file), and the folders a
shared server reads files from (`server_path`). Kept on the model (model.state), so that a page's rerun reuses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from workbench import engine, sae
from workbench.errors import InputError
from workbench.model import LoadedModel, allowed_root
from workbench.runs import encode, run_edited
from workbench.tokens import ordinary_token_ids

REFERENCE_WINDOWS = 32  # reference prompts cut from the held-out text
REFERENCE_TOKENS = 64  # tokens per reference window


def reference_prompts(model: LoadedModel) -> tuple[str, ...]:
    """The default reference set: windows of the model's held-out text (models/<name>/heldout_*.txt), or,
    for a model without one (the circuits model), random sequences of its ordinary tokens (its training text)."""
    folder = Path(model.info.source)
    files = sorted(folder.glob("heldout_*.txt"))
    if files:
        ids = model.tokenizer("\n\n".join(f.read_text(encoding="utf-8") for f in files), add_special_tokens=False)["input_ids"]
        step = max(REFERENCE_TOKENS, len(ids) // REFERENCE_WINDOWS)
        windows = [ids[i : i + REFERENCE_TOKENS] for i in range(0, len(ids) - REFERENCE_TOKENS + 1, step)][:REFERENCE_WINDOWS]
        return tuple(model.tokenizer.decode(w) for w in windows)
    words = ordinary_token_ids(model.tokenizer, model.info.d_vocab)
    # tokens that are text (a prompt is checked for control characters)
    words = words[[model.tokenizer.decode([int(t)]).isprintable() for t in words]]
    gen = torch.Generator().manual_seed(0)
    n = min(REFERENCE_TOKENS, model.info.n_ctx - 1)
    return tuple(model.tokenizer.decode(words[torch.randint(len(words), (n,), generator=gen)]) for _ in range(REFERENCE_WINDOWS))


def mean_reference(model: LoadedModel, reference: tuple[str, ...] = ()) -> str:
    """What a mean ablation here averages over, in words (the graph's mean is another: graph_faithfulness.ablation_reference)."""
    if reference:
        return f"mean over {len(reference)} given reference prompt(s)"
    if any(Path(model.info.source).glob("heldout_*.txt")):
        return f"mean over {REFERENCE_WINDOWS} windows of {REFERENCE_TOKENS} tokens of the model's held-out text"
    return f"mean over {REFERENCE_WINDOWS} random sequences of the model's ordinary tokens (it has no held-out text)"


def _activations(model: LoadedModel, prompts: Sequence[str], hooks: Sequence[str]) -> dict[str, torch.Tensor]:
    """{hook: (n, ...)} the activations at every non-BOS position of every prompt, stacked (float32, CPU)."""
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    skip = 1 if model.bos_id is not None else 0
    for p in prompts:
        ids, _ = encode(model, p, truncate=True)
        _, cache = run_edited(model, ids[None], names=hooks)
        for h in hooks:
            out[h].append(cache[h][0, skip:].float().cpu())
    return {h: torch.cat(v) for h, v in out.items()}


def reference_mean(model: LoadedModel, reference: tuple[str, ...], hook: str, fn: Callable | None = None, key: str = "") -> torch.Tensor:
    """The mean over the reference set's non-BOS positions of `hook`'s activation (or of fn(activation)); kept on the model."""
    prompts = reference or reference_prompts(model)
    store = model.state.reference_means
    k = (hash(prompts), hook, key)
    if k not in store:
        acts = _activations(model, prompts, [hook])[hook]  # (n, ...)
        store[k] = (fn(acts) if fn is not None else acts).mean(0)
    return store[k]


def load_sae(model: LoadedModel, which: str | None) -> sae.SAE:
    """The SAE named by hook name (one of the model's), folder or sae.USER + folder; None: the model's only one.

    Read from the model's one registry (sae.pick); a folder only where this server reads folders (server_path)."""
    shipped = sae.saes_of(model)
    if which is None:
        if len(shipped) != 1:
            raise InputError(f"name the SAE (sae=HOOK or a folder): this model ships {len(shipped)} ({', '.join(shipped) or 'none'})")
        which = next(iter(shipped))
    if which in shipped:
        return shipped[which]
    folder = server_path(which.removeprefix(sae.USER), "SAE folders", also=Path(model.info.source))
    if not Path(folder).expanduser().is_dir():
        raise InputError(f"no SAE '{which}': give one of this model's ({', '.join(shipped) or 'none shipped'}) or an SAE folder")
    return sae.pick(model, sae.USER + str(folder), (str(folder),))


def server_path(path: str | Path, what: str, also: Path | None = None) -> Path:
    """The path, resolved; on a shared server (WORKBENCH_MODEL_ROOT) only under that folder (or `also`), as model folders."""
    path = Path(path).expanduser()
    root = allowed_root()
    if root is None:
        return path
    target = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not (target.is_relative_to(root) or (also is not None and target.is_relative_to(also.resolve()))):
        raise InputError(f"this server reads {what} only from {root}: '{path}' is outside it")
    return target


def load_vector(path: str | Path, width: int) -> torch.Tensor:
    """(width,) a vector saved as .safetensors (one tensor, or one named 'vector'), .pt/.pth or .npy; checked for width."""
    path = server_path(path, "vector files")
    if not path.is_file():
        raise InputError(f"no vector file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "vector" not in tensors and len(tensors) != 1:
                raise InputError(f"{path} holds {len(tensors)} tensors ({', '.join(tensors)}): name the steering vector 'vector'")
            v = tensors.get("vector", next(iter(tensors.values())))
        elif path.suffix in (".pt", ".pth"):
            v = torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".npy":
            import numpy as np

            v = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            raise InputError(f"a vector file is .safetensors, .pt or .npy, got {path.name}")
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot read the vector {path.name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(v, torch.Tensor):
        raise InputError(f"{path.name} holds a {type(v).__name__}, not a tensor")
    v = v.detach().float().reshape(-1) if v.ndim == 2 and 1 in v.shape else v.detach().float()
    if v.ndim != 1 or v.shape[0] != width:
        raise InputError(f"the vector in {path.name} has shape {tuple(v.shape)}, but this model's residual stream has width {width}")
    if not torch.isfinite(v).all():
        raise InputError(f"the vector in {path.name} holds NaN or infinite values")
    return v


def difference_vector(model: LoadedModel, plus: Sequence[str], minus: Sequence[str], layer: int, site: str = "resid_pre") -> torch.Tensor:
    """(d_model,) mean activation at `site` of `layer` over the plus prompts' non-BOS positions, minus the minus prompts'."""
    if not plus or not minus:
        raise InputError("a difference vector needs prompts on both sides (plus and minus)")
    hook = f"blocks.{layer}.{engine.SITE_HOOKS[site]}"
    store = model.state.differences
    key = (tuple(plus), tuple(minus), hook)
    if key not in store:
        store[key] = _activations(model, plus, [hook])[hook].mean(0) - _activations(model, minus, [hook])[hook].mean(0)
    return store[key]
