"""Conventions: numbers that depend on the coordinate system the model runs in, named where they are shown.

The workbench runs a model in transformer-lens's compatibility mode (model.py): layer norms folded
into the weights that read them, writing weights centred, value biases folded into the attention
output bias b_O. Most numbers do not change (logits, patterns, patching, MLP outputs), but a few
are defined by the coordinates:

- **Zero-ablating a head.** A head's output is z · W_O, with z = pattern · (LN(x) W_V + b_V). In
  plain Hugging Face coordinates z holds the head's whole value; after folding, the LayerNorm bias
  β and the value bias b_V are moved out of z into b_O, so the folded z is the HF z minus the
  head's constant c_h = β · W_V + b_V (pattern rows sum to one). Zeroing the folded z therefore
  keeps the constant output c_h · W_O ("zero the head's input-dependent output", transformer-lens's
  convention); zeroing the HF z removes it too ("zero the head's whole output", plain transformers
  and nnsight). Measured on a 2-layer GPT-2: 16.62 vs 16.44 (NOTES.md). Both are offered
  (`ZERO_CONVENTIONS`); the whole output is the folded z set to −c_h. Mean and resample ablation
  are the same in both (c_h cancels), and so is an MLP's or a neuron's zero.
- **Residual-stream vectors** (means, steering vectors, DLA directions): compatibility mode centres
  the writing weights, so a residual vector here is the HF hidden state minus its mean over
  d_model. Every layer norm removes that mean, so a steering vector added here acts exactly as its
  centred version would in HF; a vector taken from HF hidden states and added here is centred by
  the next layer norm anyway, but its norm as printed differs. `RESIDUAL` is the line the views show.
- **Direct logit attribution** is defined in the folded coordinates (transformer-lens refuses a
  bridge without them): a head's direct effect there excludes its constant output, which is
  counted with the bias term.
"""

from __future__ import annotations

import torch

from workbench.model import LoadedModel

# the two zero ablations of a head: the edit line's word -> what it does, as the page and the glossary say it
ZERO_CONVENTIONS = {
    "zero": "zero the head's input-dependent output (hook_z in transformer-lens's folded coordinates; "
    "its constant output (b_V + β·W_V)·W_O stays, as transformer-lens does)",
    "zero-whole": "zero the head's whole output (its slice of the output projection's input, as plain transformers and nnsight)",
}
RESIDUAL = (
    "residual vectors are in transformer-lens's compatibility-mode coordinates: Hugging Face hidden states minus their "
    "mean over d_model (every layer norm removes it)"
)
DLA = "direct logit attribution in folded coordinates: a head's constant output (b_V + β·W_V)·W_O is counted with the biases"


def convention(how: str, unit: str = "head") -> str:
    """The one-line description of an ablation `how` for `unit`, for labels, manifests and pages."""
    if unit == "head" and how in ZERO_CONVENTIONS:
        return ZERO_CONVENTIONS[how]
    if how in ZERO_CONVENTIONS:
        return f"zero the {unit}'s output (the same in every coordinate system)"
    return f"{how} ablation (the same in every coordinate system)"


def raw_twin(model: LoadedModel, keep: bool = True) -> LoadedModel:
    """The same model on raw Hugging Face weights (no compatibility mode): the model itself when it is raw already.

    A second load of the weights, kept on the model (`model.state.raw_twin`) for the numbers defined in
    Hugging Face's coordinates; with `keep=False` a kept one is reused, else one is loaded for the
    caller alone (freed with it). It cannot share the loaded model's weights: compatibility mode
    rewrites nearly every one (layer norms folded into the next weights, every writing weight
    centred, the embeddings included), and the raw numbers are not recoverable from the folded ones
    (centring drops each residual's mean). A raw GPT-2-small shape: 0.52 GB at peak, 0.37 GB held.
    """
    if not model.info.compatibility_mode:
        return model
    from workbench.model import load_model

    info = model.info
    with model.lock:  # one twin, however many sessions ask at once
        if model.state.raw_twin is None:
            if not keep:
                return load_model(info.name, device=info.device, dtype=info.dtype, compatibility_mode=False)
            model.state.raw_twin = load_model(info.name, device=info.device, dtype=info.dtype, compatibility_mode=False)
    return model.state.raw_twin


def head_constants(model: LoadedModel) -> torch.Tensor:
    """(layer, head, d_head) c_h: Hugging Face's z minus the workbench's z for every head; zeros on raw weights.

    Read by running the model once more on raw Hugging Face weights (transformer-lens's bridge
    without compatibility mode: `raw_twin`) and once as
    loaded, on the same tokens: the difference of their `hook_z` is the same at every position
    (pattern rows sum to one), checked. Kept on the model (`model.state.head_constants`).
    """
    if model.state.head_constants is not None:
        return model.state.head_constants
    info = model.info
    if not info.compatibility_mode:
        out = torch.zeros(info.n_layers, info.n_heads, info.d_head)
    else:
        from workbench.runs import run_tokens

        raw = raw_twin(model, keep=False)  # four tokens once: the twin is not kept for this alone
        ids = torch.arange(min(4, info.n_ctx, info.d_vocab))[None]  # (1, 4): any tokens do
        names = [f"blocks.{layer}.attn.hook_z" for layer in range(info.n_layers)]
        _, folded = run_tokens(model, ids, names=names)
        _, plain = run_tokens(raw, ids, names=names)
        diff = torch.stack([(plain[n] - folded[n])[0].float().cpu() for n in names])  # (layer, pos, head, d_head)
        spread = float((diff - diff[:, :1]).abs().max())
        scale = max(1.0, float(diff.abs().max()))
        if spread > 1e-3 * scale:  # an internal invariant: the folding moved a constant, nothing else
            raise AssertionError(f"the head constants differ between positions by {spread:.2e}")
        out = diff.mean(1)  # (layer, head, d_head)
    model.state.head_constants = out
    return out
