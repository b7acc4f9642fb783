"""Tuned lenses saved by the `tuned-lens` package (Belrose et al. 2023), read without unpickling.

The package's checkpoint (tuned_lens 0.2.0, `TunedLens.save`) is a folder with
- config.json: base_model_name_or_path, d_model, num_hidden_layers, bias, unembed_hash, lens_type
  ("linear_tuned_lens");
- params.pt: the state dict of its translators, one `nn.Linear(d_model, d_model)` per layer:
  "{i}.weight" (d_model, d_model) and "{i}.bias" (d_model,), i = 0 .. num_hidden_layers − 1.
Translator i reads plain transformers' hidden_states[i] (the embeddings for i = 0, block i − 1's
output after that) as h -> h + h·Wᵢᵀ + bᵢ, then the model's final norm and unembedding.

params.pt is a pickle, and the workbench never unpickles; convert it once, where the file is trusted:
    python -m workbench.tuned_lens_io path/to/params.pt      # writes params.safetensors beside it
(`safetensors.torch.save_file(torch.load(path, weights_only=True), ...)`), and `read` takes the folder.

Coordinates: the translators were trained on Hugging Face hidden states. The workbench's residual
stream in compatibility mode is those states minus their mean over d_model, and a translator does
not map that mean to a multiple of the all-ones vector (h·Wᵀ mixes it into every direction), so the
final norm does not remove it: the package's reading is reproduced only on Hugging Face hidden
states. `readings` therefore reads them from the model on raw weights (conventions.raw_twin).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import conventions
from workbench.errors import InputError
from workbench.model import LoadedModel

CONFIG, PICKLE, WEIGHTS = "config.json", "params.pt", "params.safetensors"


def convert(path: str | Path) -> Path:
    """Writes params.safetensors beside a tuned-lens params.pt (a pickle: only for a file you trust); returns its path."""
    from safetensors.torch import save_file

    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)  # weights_only: tensors and containers, no code objects
    target = path.with_name(WEIGHTS)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target


@dataclass(frozen=True)
class PackageLens:
    """A tuned-lens package checkpoint: one affine translator per layer, applied as h + h·A[i] + b[i] (A = Wᵀ)."""

    A: torch.Tensor  # (layer, d_model, d_model)
    b: torch.Tensor  # (layer, d_model)
    config: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.A.shape[0]

    def translate(self, hidden: torch.Tensor) -> torch.Tensor:
        """(layer, pos, d_model) hidden states 0 .. layer−1 -> the same, translated."""
        return hidden + torch.einsum("lpd,lde->lpe", hidden, self.A) + self.b[:, None]


def read(folder: str | Path, model: LoadedModel | None = None) -> PackageLens:
    """The lens in `folder` (config.json + params.safetensors); checked against `model`'s width and depth when given."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not (folder / CONFIG).is_file():
        raise InputError(f"{folder} is not a tuned-lens checkpoint: config.json missing")
    if not (folder / WEIGHTS).is_file():
        hint = f"convert {PICKLE} once, where you trust it: python -m workbench.tuned_lens_io {folder / PICKLE}"
        raise InputError(
            f"{folder} has no {WEIGHTS}" + (f" ({PICKLE} is a pickle, never read here); {hint}" if (folder / PICKLE).exists() else "")
        )
    try:
        config = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{folder / CONFIG} is not valid JSON ({err.msg})") from None
    if config.get("lens_type", "linear_tuned_lens") != "linear_tuned_lens":
        raise InputError(f"lens type {config.get('lens_type')!r} is not one this workbench reads (linear_tuned_lens)")
    tensors = load_file(str(folder / WEIGHTS))
    n, d = int(config.get("num_hidden_layers", 0)), int(config.get("d_model", 0))
    missing = [f"{i}.weight" for i in range(n) if f"{i}.weight" not in tensors]
    if n < 1 or missing:
        raise InputError(f"{folder / WEIGHTS} does not hold {n} translators ({', '.join(missing[:3]) or 'num_hidden_layers missing'})")
    W = torch.stack([tensors[f"{i}.weight"].float() for i in range(n)])  # (layer, d_out, d_in)
    b = torch.stack([tensors[f"{i}.bias"].float() if f"{i}.bias" in tensors else torch.zeros(d) for i in range(n)])
    if W.shape[1:] != (d, d):
        raise InputError(f"the translators have shape {tuple(W.shape[1:])}, but config.json says d_model = {d}")
    if model is not None and (d, n) != (model.info.d_model, model.info.n_layers):
        raise InputError(
            f"this tuned lens is for a model of width {d} and {n} layers; {model.info.name} has {model.info.d_model} and {model.info.n_layers}"
        )
    return PackageLens(W.transpose(1, 2).contiguous(), b, config)


def hidden_states(model: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """(layer + 1, pos, d_model) plain transformers' hidden states of token ids (pos,): read from the model on raw weights."""
    from workbench.runs import run_tokens

    raw = conventions.raw_twin(model)
    n = raw.info.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    _, cache = run_tokens(raw, ids[None], names=names)
    return torch.stack([cache[name][0].float().cpu() for name in names])


def readings(model: LoadedModel, lens: PackageLens, ids: torch.Tensor) -> torch.Tensor:
    """(layer, pos, d_vocab) the package's reading of hidden states 0 .. layer−1: translated, final norm, unembedding."""
    from workbench.lens import readout

    hidden = hidden_states(model, ids)[: lens.n_layers]  # (layer, pos, d_model)
    with torch.no_grad():
        return readout(conventions.raw_twin(model), lens.translate(hidden))


if __name__ == "__main__":  # python -m workbench.tuned_lens_io params.pt
    if len(sys.argv) != 2 or not sys.argv[1].endswith(".pt"):
        print("usage: python -m workbench.tuned_lens_io path/to/params.pt", file=sys.stderr)
        sys.exit(2)
    print(convert(sys.argv[1]))
