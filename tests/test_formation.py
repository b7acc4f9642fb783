"""How mechanisms formed: the training view's analysis, its figures and its probe, on the shipped checkpoints."""

import json

import pytest
import torch

from probes.__main__ import main as probes_main
from workbench import formation, heads
from workbench.checkpoints import steps
from workbench.errors import InputError
from workbench.figures import formation as draw
from workbench.model import MODELS_DIR


def test_phase_change_is_the_largest_real_rise():
    best = torch.tensor([0.01, 0.02, 0.05, 0.45, 0.5, 0.52])
    assert formation.phase_change((10, 20, 30, 40, 50, 60), best) == (30, 40)
    assert formation.phase_change((10, 20, 30), torch.tensor([0.01, 0.05, 0.08])) is None  # no rise of 0.1
    assert formation.phase_change((10,), torch.tensor([0.9])) is None


def test_models_without_checkpoints_are_refused_with_the_ones_that_have_them():
    with pytest.raises(InputError, match="circuits"):
        formation.check_model("answer-key")


@pytest.fixture(scope="module")
def formed():
    return formation.formation("circuits", n=20, seqs=4)


def test_formation_reads_every_checkpoint(formed):
    f = formed
    assert f.steps == tuple(steps(MODELS_DIR / "circuits"))
    layers, heads_ = 2, 4
    for scores in f.scores.values():
        assert scores.shape == (len(f.steps), layers, heads_)
        assert ((scores >= 0) & (scores <= 1 + 1e-6)).all()  # shares of attention
    assert torch.allclose(f.in_context_loss, f.late_loss - f.early_loss)
    assert f.loss_curve["copy_loss"][0][0] == 1  # the training log, from its first step


def test_the_last_checkpoint_scores_like_the_final_model(formed, circuits):
    final = heads.repeat_scores(circuits, n=20, seqs=4, seed=0)
    # the last snapshot is the final weights in fp16: the same heads, the same scores to rounding
    assert torch.allclose(formed.scores["induction"][-1], final.induction, atol=2e-2)
    assert torch.allclose(formed.scores["previous token"][-1], final.previous_token, atol=2e-2)


def test_the_trained_circuits_model_shows_its_phase_change(formed):
    f = formed
    assert f.phase_change is not None
    before, after = f.steps.index(f.phase_change[0]), f.steps.index(f.phase_change[1])
    assert f.best_layer("induction")[after] - f.best_layer("induction")[before] >= formation.PHASE_CHANGE_RISE
    assert f.best_layer("induction")[-1] >= 0.4 and f.best("induction")[0] < 0.2  # a layer's heads share the copying
    assert f.in_context_loss[-1] < f.in_context_loss[0] - 1  # once it copies, the second copy is far easier


def test_figures_show_every_head_and_mark_the_phase_change(formed):
    fig = draw.head_scores_over_training(formed)
    assert len(fig.data) == 3 * 2 * 4  # a line per head in each of the three panels
    assert list(fig.data[0].x) == list(formed.steps)
    per_panel = 2 * 4
    for i in range(per_panel):  # a head keeps its colour in every panel, as the one legend says
        assert fig.data[i].line.color == fig.data[i + per_panel].line.color == fig.data[i + 2 * per_panel].line.color
    assert len(fig.layout.shapes) == 3  # the shaded phase change in each panel
    assert len(draw.in_context_loss(formed).data) == 3 and len(draw.loss_curve(formed).data) >= 1


def test_probe_writes_the_figures_and_a_summary(tmp_path):
    out = tmp_path / "training"
    assert probes_main(["training", "--model", "circuits", "--repeat-n", "10", "--formats", "html", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["summary"]["checkpoints"] == steps(MODELS_DIR / "circuits")
    assert {"head-scores-over-training.html", "formation.json", "formation.csv"} <= set(manifest["files"])
    assert probes_main(["training", "--model", "answer-key", "--out", str(tmp_path / "x")]) == 2


def test_formation_equals_plain_transformers_at_every_checkpoint(formed):
    """Each snapshot loaded into plain transformers' GPT-2: the head scores by hand from its attentions on the view's
    sequences (per sequence, then averaged), the early and late losses by hand on the view's prompts, and the phase
    change as the largest rise of the best layer's summed induction score."""
    from transformers import GPT2LMHeadModel

    from tests.references import hf_patterns
    from workbench.checkpoints import weights
    from workbench.model import load_model

    folder = MODELS_DIR / "circuits"
    n, seqs = formed.settings["n"], formed.settings["seqs"]
    model = load_model("circuits")
    tokens = heads.repeat_scores(model, n=n, seqs=seqs, seed=0, keep_patterns=True).tokens  # the view's sequences (same seed)
    prompts, _ = formation._text_windows(model, folder, n, seqs, 0)  # the view's prompts (the same module's input)
    tok = model.tokenizer
    q = torch.arange(n + 1, 2 * n + 1)
    rows = torch.arange(1, 2 * n + 1)
    for i, step in enumerate(formed.steps):
        hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
        loaded = hf.load_state_dict(weights(folder / "checkpoints" / f"step-{step:06d}.safetensors"), strict=False)
        assert loaded.missing_keys == ["lm_head.weight"] and hf.lm_head.weight is hf.transformer.wte.weight  # tied to wte
        p = hf_patterns(hf, tokens)  # (seq, layer, head, q, k)
        want = {
            "induction": p[..., q, q - n + 1].mean(-1).mean(0),
            "duplicate token": p[..., q, q - n].mean(-1).mean(0),
            "previous token": p[..., rows, rows - 1].mean(-1).mean(0),
        }
        for t, ref in want.items():
            assert torch.allclose(formed.scores[t][i], ref, atol=1e-4), (step, t)
        early, late = [], []
        for prompt in prompts:
            ids = torch.tensor([[tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]][-hf.config.n_positions :]])
            with torch.no_grad():
                losses = torch.nn.functional.cross_entropy(hf(ids).logits[0, :-1], ids[0, 1:], reduction="none")  # (pos - 1,)
            m = len(losses)
            early.append(losses[1 : max(2, int(0.1 * m))].mean())
            late.append(losses[int(0.8 * m) :].mean())
        assert formed.early_loss[i] == pytest.approx(float(torch.stack(early).mean()), abs=1e-4), step
        assert formed.late_loss[i] == pytest.approx(float(torch.stack(late).mean()), abs=1e-4), step
    best = formed.scores["induction"].sum(-1).max(-1).values  # (checkpoint,)
    rise = best[1:] - best[:-1]
    j = int(rise.argmax())
    assert formed.phase_change == (formed.steps[j], formed.steps[j + 1]) and float(rise[j]) >= 0.1
