"""MODEL@STEP: a shipped model's training checkpoints open like any model, equal to their snapshot's weights."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from workbench import checkpoints
from workbench.errors import InputError
from workbench.model import MODELS_DIR, load_model, resolve
from workbench.runs import run_prompt


def test_names():
    assert checkpoints.split_name("english@1200") == ("english", 1200)
    assert checkpoints.split_name("english") is None
    with pytest.raises(InputError, match="MODEL@STEP"):
        checkpoints.split_name("english@latest")


def test_a_checkpoint_is_its_snapshot_through_every_layer_of_the_workbench():
    step = checkpoints.steps(MODELS_DIR / "circuits")[2]
    _, folder, kind = resolve(f"circuits@{step}")
    assert kind == "checkpoint" and (folder / "model.safetensors").exists()
    model = load_model(f"circuits@{step}")
    assert model.info.name == f"circuits@{step}" and model.info.kind == "checkpoint"
    # an independent reference: plain transformers with the snapshot's weights
    reference = GPT2LMHeadModel.from_pretrained(MODELS_DIR / "circuits").eval()
    reference.load_state_dict(checkpoints.weights(MODELS_DIR / "circuits" / "checkpoints" / f"step-{step:06d}.safetensors"), strict=False)
    reference.tie_weights()
    prompt = "apple river stone cloud apple river"
    run = run_prompt(model, prompt)
    with torch.no_grad():
        want = reference(run.tokens[None]).logits[0]
    assert torch.allclose(run.logits, want, atol=1e-4)
    final = run_prompt(load_model("circuits"), prompt)
    assert not torch.allclose(run.logits, final.logits, atol=1e-2)  # an earlier model, not the final one


def test_unknown_steps_and_models_without_checkpoints_say_what_exists():
    have = checkpoints.steps(MODELS_DIR / "circuits")
    with pytest.raises(InputError, match=f"checkpoints at steps {have[0]}, {have[1]}"):
        load_model(f"circuits@{have[0] + 1}")
    with pytest.raises(InputError, match="no training checkpoints"):
        load_model("answer-key@10")
