"""Reduced precision and accelerate's offloading against the whole float32 model; the loading path's clear lines.

Tolerances (README, "Reduced precision"), measured on the shipped English model (4 layers) and
given here with ~2x room: bfloat16 keeps 8 bits of mantissa, float16 11, so float16 is ~10x closer.
"""

import pytest
import torch

from workbench import attribution, engine, lens, patching, tasks
from workbench.errors import InputError
from workbench.model import load_model
from workbench.runs import run_prompt

CLEAN = "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the old"
CORRUPTED = "In the morning Jane walked to the old woman by the sea. In the morning Jane walked to the old"
# (lens probability, lens entropy in nats, patching (normalised: 1 = full restoration), DLA and IG relative to their largest value)
TOLERANCE = {"bfloat16": (0.03, 0.1, 0.03, 0.02, 0.05), "float16": (0.005, 0.01, 0.005, 0.002, 0.01)}


def _views(model, dla: bool = True):
    answers, wrongs = tasks.candidate_answers(model, CLEAN, CORRUPTED)
    answer, wrong = next(iter(answers.values())), next(iter(wrongs.values()))
    setup = tasks.Pair(CLEAN, CORRUPTED, answer, wrong)
    return (
        lens.lens(model, CLEAN, k=5),
        patching.sweep(model, setup, "resid_pre", "denoising"),
        attribution.component_attribution(model, CLEAN, answer, wrong) if dla else None,  # needs compatibility mode
        attribution.input_attribution(model, CLEAN, attribution.Answer((answer,)), steps=16),
    )


@pytest.fixture(scope="module")
def float32_views(english):
    return _views(english)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_lens_patching_and_attribution_agree_with_float32(float32_views, dtype):
    model = load_model("english", dtype=dtype)
    assert model.info.dtype == dtype and next(model.bridge.original_model.parameters()).dtype == getattr(torch, dtype)
    (l32, p32, c32, i32), (lr, p, c, i) = float32_views, _views(model)
    probs, entropy, patched, dla, ig = TOLERANCE[dtype]
    assert (lr.top_probs - l32.top_probs).abs().max() < probs
    assert (lr.entropy - l32.entropy).abs().max() < entropy
    assert (p.values - p32.values).abs().max() < patched
    assert (c.component_values - c32.component_values).abs().max() < dla * c32.component_values.abs().max()
    assert (c.heads - c32.heads).abs().max() < dla * c32.component_values.abs().max()
    assert (i.scores - i32.scores).nan_to_num().abs().max() < ig * i32.scores.nan_to_num().abs().max()


def test_a_model_offloaded_past_max_memory_gives_the_whole_models_numbers():
    """5 MB of weights given 2 MB: accelerate keeps the blocks on disk; every view matches the same model loaded whole."""
    whole = load_model("english", compatibility_mode=False)  # an offloaded model keeps its raw weights (transformer-lens)
    off = load_model("english", max_memory={"cpu": "2MB"})
    assert "disk" in off.info.note and not off.info.compatibility_mode
    assert any(p.is_meta for p in off.bridge.original_model.parameters())  # really offloaded
    assert torch.equal(run_prompt(off, CLEAN).logits, run_prompt(whole, CLEAN).logits)
    lw, pw, _, iw = _views(whole, dla=False)
    lo, po, _, io = _views(off, dla=False)
    assert torch.equal(lo.top_probs, lw.top_probs)
    assert (po.values - pw.values).abs().max() < 1e-5  # the offloaded sweep runs through the hooks, the whole one through the engine
    assert (io.scores - iw.scores).nan_to_num().abs().max() < 1e-5


def test_an_offloaded_models_block_weights_are_the_whole_models():
    """engine.block_weights reads an offloaded block from the bridge while onloaded (its MLP bias through the alias's
    path, not the reference taken at load), and gets the numbers the whole model's engine copy holds."""
    whole = load_model("english", compatibility_mode=False)
    off = load_model("english", max_memory={"cpu": "2MB"})
    engine.weights_of(whole)  # the whole model's block weights from the engine's copy
    for layer in range(whole.info.n_layers):
        w, o = engine.block_weights(whole, layer), engine.block_weights(off, layer)
        for name in ("W_O", "b_O", "W_out", "b_out"):
            assert torch.equal(getattr(o, name), getattr(w, name)), (layer, name)


def test_a_dtype_the_device_lacks_is_one_line():
    with pytest.raises(InputError, match="MPS device has no bfloat16"):
        load_model("english", device="mps", dtype="bfloat16")
    with pytest.raises(InputError, match="unknown dtype 'int8'"):
        load_model("english", dtype="int8")


def test_a_gpu_without_bfloat16_is_one_line(monkeypatch):
    """No GPU here: the check's own answer from torch is what is replaced (an old GPU, compute capability 6.1)."""
    from workbench.model import check_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (6, 1))
    with pytest.raises(InputError, match=r"^this GPU \(cuda:0, compute capability 6.1\) has no bfloat16: use dtype='float16'") as err:
        check_dtype("bfloat16", "cuda:0")
    assert "\n" not in str(err.value)


def test_a_dtype_this_cpu_cannot_compute_in_is_one_line(monkeypatch):
    """A CPU (or a torch build) without a float16 matmul kernel: torch's own error, as it words it, becomes one line at load."""
    real = torch.matmul

    def no_half(a, b, *args, **kwargs):
        if a.dtype == torch.float16:
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "matmul", no_half)
    with pytest.raises(InputError, match=r"^cpu cannot compute in float16 with this build of torch .*addmm.*: use dtype='float32'$"):
        load_model("english", device="cpu", dtype="float16")
    monkeypatch.undo()
    assert load_model("english", device="cpu", dtype="float16").info.dtype == "float16"  # this CPU can: nothing refused


def test_a_model_too_big_for_free_memory_is_refused_before_loading(monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=1_000_000))  # 1 MB free
    with pytest.raises(InputError, match=r"needs about .* GB to load in float32 in compatibility mode.*max_memory"):
        load_model("english", device="cpu")
