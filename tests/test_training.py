"""How mechanisms formed: the training view's analysis, its figures and its probe, on the shipped checkpoints."""

import json

import pytest
import torch

from probes.__main__ import main as probes_main
from workbench import heads, training
from workbench.checkpoints import steps
from workbench.errors import InputError
from workbench.figures import training as draw
from workbench.model import MODELS_DIR


def test_phase_change_is_the_largest_real_rise():
    best = torch.tensor([0.01, 0.02, 0.05, 0.45, 0.5, 0.52])
    assert training.phase_change((10, 20, 30, 40, 50, 60), best) == (30, 40)
    assert training.phase_change((10, 20, 30), torch.tensor([0.01, 0.05, 0.08])) is None  # no rise of 0.1
    assert training.phase_change((10,), torch.tensor([0.9])) is None


def test_models_without_checkpoints_are_refused_with_the_ones_that_have_them():
    with pytest.raises(InputError, match="circuits"):
        training.check_model("answer-key")


@pytest.fixture(scope="module")
def formation():
    return training.formation("circuits", n=20, seqs=4)


def test_formation_reads_every_checkpoint(formation):
    f = formation
    assert f.steps == tuple(steps(MODELS_DIR / "circuits"))
    layers, heads_ = 2, 4
    for scores in f.scores.values():
        assert scores.shape == (len(f.steps), layers, heads_)
        assert ((scores >= 0) & (scores <= 1 + 1e-6)).all()  # shares of attention
    assert torch.allclose(f.in_context_loss, f.late_loss - f.early_loss)
    assert f.loss_curve["copy_loss"][0][0] == 1  # the training log, from its first step


def test_the_last_checkpoint_scores_like_the_final_model(formation, circuits):
    final = heads.repeat_scores(circuits, n=20, seqs=4, seed=0)
    # the last snapshot is the final weights in fp16: the same heads, the same scores to rounding
    assert torch.allclose(formation.scores["induction"][-1], final.induction, atol=2e-2)
    assert torch.allclose(formation.scores["previous token"][-1], final.previous_token, atol=2e-2)


def test_the_trained_circuits_model_shows_its_phase_change(formation):
    f = formation
    assert f.phase_change is not None
    before, after = f.steps.index(f.phase_change[0]), f.steps.index(f.phase_change[1])
    assert f.best_layer("induction")[after] - f.best_layer("induction")[before] >= training.PHASE_CHANGE_RISE
    assert f.best_layer("induction")[-1] >= 0.4 and f.best("induction")[0] < 0.2  # a layer's heads share the copying
    assert f.in_context_loss[-1] < f.in_context_loss[0] - 1  # once it copies, the second copy is far easier


def test_figures_show_every_head_and_mark_the_phase_change(formation):
    fig = draw.head_scores_over_training(formation)
    assert len(fig.data) == 3 * 2 * 4  # a line per head in each of the three panels
    assert list(fig.data[0].x) == list(formation.steps)
    per_panel = 2 * 4
    for i in range(per_panel):  # a head keeps its colour in every panel, as the one legend says
        assert fig.data[i].line.color == fig.data[i + per_panel].line.color == fig.data[i + 2 * per_panel].line.color
    assert len(fig.layout.shapes) == 3  # the shaded phase change in each panel
    assert len(draw.in_context_loss(formation).data) == 3 and len(draw.loss_curve(formation).data) >= 1


def test_probe_writes_the_figures_and_a_summary(tmp_path):
    out = tmp_path / "training"
    assert probes_main(["training", "--model", "circuits", "--repeat-n", "10", "--formats", "html", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["summary"]["checkpoints"] == steps(MODELS_DIR / "circuits")
    assert {"head-scores-over-training.html", "formation.json", "formation.csv"} <= set(manifest["files"])
    assert probes_main(["training", "--model", "answer-key", "--out", str(tmp_path / "x")]) == 2
