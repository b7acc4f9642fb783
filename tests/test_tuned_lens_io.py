"""A checkpoint written by the `tuned-lens` package itself (tests/fixtures/tuned_lens, made by its make.py): converted
from params.pt by the one-line converter, read, and applied, it gives the package's own readings."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench import tuned_lens_io
from workbench.errors import InputError
from workbench.model import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "tuned_lens" / "circuits"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lens") / "circuits"
    shutil.copytree(FIXTURE, folder)
    done = subprocess.run([sys.executable, "-m", "workbench.tuned_lens_io", str(folder / "params.pt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == folder / "params.safetensors"
    return folder


def test_the_converter_keeps_every_tensor(converted):
    state = torch.load(converted / "params.pt", weights_only=True)
    tensors = load_file(str(converted / "params.safetensors"))
    assert set(state) == set(tensors) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert all(torch.equal(state[k], tensors[k]) for k in state)


@pytest.mark.parametrize("mode", ["compatibility", "raw"])
def test_the_reading_is_the_packages_own(converted, circuits, mode):
    model = circuits if mode == "compatibility" else load_model("circuits", compatibility_mode=False)
    lens = tuned_lens_io.read(converted, model)
    ref = load_file(str(converted / "reference.safetensors"))
    got = tuned_lens_io.readings(model, lens, ref["ids"][0])  # (layer, pos, d_vocab)
    assert got.shape == ref["logits"].shape
    assert torch.allclose(got, ref["logits"], atol=1e-4, rtol=1e-4)


def test_the_folded_residual_would_read_differently(converted, circuits):
    """Why the reading runs on Hugging Face hidden states: the translators on the centred residual give other logits."""
    from workbench.lens import readout
    from workbench.runs import run_tokens

    lens = tuned_lens_io.read(converted, circuits)
    ids = load_file(str(converted / "reference.safetensors"))["ids"]
    _, cache = run_tokens(circuits, ids, names=["blocks.1.hook_resid_pre"])
    x = cache["blocks.1.hook_resid_pre"][0].float().cpu()  # (pos, d_model): HF hidden state 1, centred
    folded = readout(circuits, x + x @ lens.A[1] + lens.b[1])
    right = tuned_lens_io.readings(circuits, lens, ids[0])[1]
    assert (folded - right).abs().max() > 1e-3


def test_a_pickle_alone_is_refused_with_the_converter_named(tmp_path, circuits):
    folder = tmp_path / "lens"
    shutil.copytree(FIXTURE, folder)
    with pytest.raises(InputError, match=r"params.pt is a pickle, never read here.*python -m workbench.tuned_lens_io"):
        tuned_lens_io.read(folder, circuits)


def test_a_lens_for_another_model_is_refused(converted, tmp_path):
    from workbench import families

    other = load_model(str(families.build("gpt2", tmp_path / "small")))  # 2 layers of width 32
    with pytest.raises(InputError, match="is for a model of width 128 and 2 layers"):
        tuned_lens_io.read(converted, other)


def test_the_logit_lens_page_reads_a_package_lens(converted):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "2_Logit_lens.py"), default_timeout=180)
    at.session_state["wb.model"] = "circuits"
    at.run()
    at.text_input(key="w.lens_package").set_value(str(converted)).run()
    assert not at.exception and not at.error
    table = at.dataframe[-1].value
    assert list(table["hidden state"]) == [0, 1]
