"""Transcoder training and its card (workbench/train/transcoders.py): the card is written by code from its measurements,
and the measurements are reproduced from the shipped weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from workbench.train import transcoders as train
from workbench.transcoder import FOLDER, transcoders_of


def _hand(tc, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations, predicted MLP output) of a TopK transcoder written out from its weight tensors."""
    h = x @ tc.W_enc + tc.b_enc
    top = h.topk(tc.k, dim=-1)
    a = torch.zeros_like(h).scatter(-1, top.indices, top.values.clamp_min(0))
    return a, a @ tc.W_dec + tc.b_dec + (0 if tc.W_skip is None else x @ tc.W_skip)


@torch.no_grad()
def _quality_by_hand(hf, tcs, rows: torch.Tensor, scored: torch.Tensor) -> dict:
    """The card's quality numbers from plain transformers' GPT-2 with hooks: a transcoder reads the MLP's input before
    the norm's gain and bias (transformer-lens folds them into W_in: ln_2's input, normalised) and replaces the MLP's
    output (transformer-lens centres it: compared centred; a layer norm reads every residual, so splicing it is the
    same edit); BOS's position is left out of the reconstruction, as in training. The response explained: plain
    transformers' MLP module (its input x·g + b of ln_2) differentiated forward-mode along v·g, centred as its output is,
    against the transcoder's response written out with its TopK set held; v = x[perm] - x per chunk (jacobian.directions,
    one generator per layer seeded with the layer, as quality draws them)."""
    from workbench.train import jacobian

    blocks = hf.transformer.h
    eps = blocks[0].ln_2.eps

    def run(ids, replace: dict) -> tuple[torch.Tensor, dict]:
        seen, hooks = {}, []
        for i, b in enumerate(blocks):
            hooks.append(
                b.ln_2.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("x", i), F.layer_norm(a[0], a[0].shape[-1:], eps=eps)))
            )

            def out(m, a, y, i=i):
                seen[("y", i)] = y - y.mean(-1, keepdim=True)
                if i not in replace:
                    return y
                return torch.zeros_like(y) if replace[i] is None else _hand(replace[i], seen[("x", i)])[1]

            hooks.append(b.mlp.register_forward_hook(out))
        try:
            return hf(ids).logits.float(), seen
        finally:
            for h in hooks:
                h.remove()

    def loss(replace) -> float:
        total = n = 0
        for s in range(0, len(rows), 16):
            ids, keep = rows[s : s + 16], scored[s : s + 16]
            logits = run(ids, replace)[0][:, :-1]
            total += float(F.cross_entropy(logits[keep], ids[:, 1:][keep], reduction="sum"))
            n += int(keep.sum())
        return total / n

    clean = loss({})
    out = {"layers": {}}
    for layer, tc in tcs.items():
        ys, preds, acts, j_mlps, j_tcs = [], [], [], [], []
        gen, ln = torch.Generator().manual_seed(layer), blocks[layer].ln_2
        for s in range(0, len(rows), 16):
            _, seen = run(rows[s : s + 16], {})
            x, y = seen[("x", layer)][:, 1:].flatten(0, 1), seen[("y", layer)][:, 1:].flatten(0, 1)  # BOS left out
            a, pred = _hand(tc, x)
            ys, preds, acts = [*ys, y.double()], [*preds, pred.double()], [*acts, a]
            v = jacobian.directions(x, gen)
            j = torch.func.jvp(blocks[layer].mlp, (x * ln.weight + ln.bias,), (v * ln.weight,))[1]
            j_mlps.append((j - j.mean(-1, keepdim=True)).double())
            j_tcs.append(((((v @ tc.W_enc) * (a > 0)) @ tc.W_dec) + (0 if tc.W_skip is None else v @ tc.W_skip)).double())
        y, pred, a = torch.cat(ys), torch.cat(preds), torch.cat(acts)
        j_mlp, j_tc = torch.cat(j_mlps), torch.cat(j_tcs)
        zero, spliced = loss({layer: None}), loss({layer: tc})
        out["layers"][layer] = {
            "variance_explained": float(1 - ((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()),
            "response_explained": float(1 - ((j_tc - j_mlp) ** 2).sum() / ((j_mlp - j_mlp.mean(0)) ** 2).sum()),
            "loss_recovered": (zero - spliced) / (zero - clean),
            "l0": float((a > 0).sum(-1).double().mean()),
            "dead": int(((a > 0).sum(0) == 0).sum()),
        }
    zero_all, spliced_all = loss(dict.fromkeys(tcs)), loss(dict(tcs))
    out["all_layers"] = {"loss_recovered": (zero_all - spliced_all) / (zero_all - clean)}
    return out


@pytest.mark.parametrize("name", ["circuits", "english", "stories"])
def test_the_card_is_its_measurements_reproduced_from_the_shipped_weights(name, english, circuits, tmp_path):
    """The card's README is written from card.json; card.json's quality numbers are recomputed with plain transformers
    and the transcoders written out (not train.quality, which wrote them)."""
    from tests.references import hf_model
    from workbench.model import load_model

    model = {"english": english, "circuits": circuits}[name] if name != "stories" else load_model("stories")
    tcs = transcoders_of(model)
    if not tcs:
        pytest.skip(f"{name} has no transcoders")
    folder = Path(model.info.source) / FOLDER
    card = json.loads((folder / "card.json").read_text())
    if (folder / "compare.json").is_file():  # other sets on the same checks: their section is written from that file
        (tmp_path / "compare.json").write_text((folder / "compare.json").read_text())
    train.write_card(tmp_path, card)
    assert (tmp_path / "README.md").read_text() == (folder / "README.md").read_text()  # every number from card.json
    assert all(tc.activation == "topk" for tc in tcs.values())  # what _hand writes out
    heldout_name, rows, scored = train.heldout(model)  # the held-out data (input)
    assert card["quality"]["heldout"] == heldout_name
    measured = _quality_by_hand(hf_model(model), tcs, rows, scored)
    for layer, q in card["quality"]["layers"].items():
        for key in ("variance_explained", "response_explained", "loss_recovered", "l0", "dead"):
            if key in q or key != "response_explained":  # cards written before it was measured lack it
                assert measured["layers"][int(layer)][key] == pytest.approx(q[key], abs=1e-3), (layer, key)
    assert measured["all_layers"]["loss_recovered"] == pytest.approx(card["quality"]["all_layers"]["loss_recovered"], abs=1e-3)


def test_the_cards_task_circuits_are_task_circuits_own_on_the_shipped_transcoders(circuits, tmp_path):
    """The card's task-circuit section (python -m workbench.train transcoders circuits --checks) holds what
    task_circuits.check_task measures now with the shipped transcoders, and its table is written from those numbers."""
    from workbench import task_circuits

    folder = Path(circuits.info.source) / FOLDER
    card = json.loads((folder / "card.json").read_text())
    if not transcoders_of(circuits) or "task_circuits" not in card:
        pytest.skip("circuits has no transcoders or no task checks on its card (python -m workbench.train transcoders circuits --checks)")
    shown = card["task_circuits"]["tasks"]["induction"]
    c = task_circuits.check_task(circuits, "induction")
    assert shown["within_tolerance"] == c.within_tolerance() and shown["passed"] == c.passed
    for mine, theirs in zip(shown["pairs"], c.rows(), strict=True):
        assert mine["prompt"] == theirs["prompt"] and mine["nodes"] == theirs["nodes"]
        for key in ("predicted", "predicted_first_order", "predicted_frozen_norm", "measured", "random_median"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-4), key
    row = next(line for line in (folder / "README.md").read_text().splitlines() if line.startswith("| induction"))
    assert row.startswith(f"| induction | {sum(p.passed for p in c.pairs)} of 8 | {c.within_tolerance()['measured']} / ")


@pytest.mark.parametrize("name", ["circuits", "english", "stories"])
def test_each_shipped_set_was_trained_with_its_models_recipe(name):
    """The card's recorded config is what `python -m workbench.train transcoders MODEL` trains with now (train.recipe):
    the stories model's own recipe (RECIPES), the others' the default (cards written before enc_init existed read as
    its default)."""
    from workbench.model import resolve

    card = resolve(name)[1] / FOLDER / "card.json"
    if not card.is_file():
        pytest.skip(f"{name} has no transcoders")
    assert train.TranscoderConfig(**json.loads(card.read_text())["config"]) == train.recipe(name)


def _replay(search: dict) -> int:
    """Checks one search (search.json, or the search before a search of given steps) step by step against `better`;
    returns the index of the run it kept last."""
    runs, best = search["runs"], 0
    steps = [(name, changes) for name, changes in train.SEARCH_STEPS if "only" not in search or name in search["only"]]
    if "response_explained" not in runs[0]["summary"]:  # a search written before the Jacobian steps existed
        steps = [(name, changes) for name, changes in steps if "jacobian" not in changes]
    assert runs[0]["step"] == "shipped" and [r["step"] for r in runs[1:]] == [name for name, _ in steps]
    for i, (run, (_, changes)) in enumerate(zip(runs[1:], steps, strict=True), start=1):
        before = train.TranscoderConfig(**runs[best]["config"])
        assert train.TranscoderConfig(**run["config"]) == dataclasses.replace(before, **changes)
        assert run["summary"] == train._summary(run["quality"])
        kept = train.better(run["summary"], runs[best]["summary"], train.same_cost(train.TranscoderConfig(**run["config"]), before))
        best = i if kept else best
    assert [r["chosen"] for r in runs] == [i == best for i in range(len(runs))]
    return best


def test_the_recipe_search_chose_by_its_rule_and_the_shipped_set_is_its_choice():
    """The stories card's recipe search (search.json): each step is the best recipe so far with the step's changes, kept
    exactly where `better` says so (a search of given steps alone: those, on top of the recipe shipped then, and the
    search before it likewise); the recipe kept last is the stories model's recipe, and the shipped transcoders,
    trained with it by `build`, measure as the search's run of it did (same seed, same data: the same training)."""
    from workbench.model import resolve

    folder = resolve("stories")[1] / FOLDER
    if not (folder / "search.json").is_file():
        pytest.skip("stories has no recipe search (workbench.train.transcoders.search)")
    search = json.loads((folder / "search.json").read_text())
    best, runs = _replay(search), search["runs"]
    # a search that ran the Jacobian steps carries the rule's history as the code writes it
    ran = {r["step"] for r in runs}
    assert search.get("note") == (train.JACOBIAN_NOTE if any("Jacobian" in step for step in ran) else None)
    if "previous" in search:  # the recipe shipped when the given steps ran is the one the search before chose
        before = search["previous"]
        assert train.TranscoderConfig(**runs[0]["config"]) == train.TranscoderConfig(**before["runs"][_replay(before)]["config"])
    chosen = train.TranscoderConfig(**runs[best]["config"])
    assert chosen == train.recipe("stories")
    card = json.loads((folder / "card.json").read_text())
    assert card["search"] == search
    if best:  # retrained with the chosen recipe: the same numbers as the search's run
        for layer, q in card["quality"]["layers"].items():
            for key in ("variance_explained", "response_explained", "loss_recovered", "l0", "dead"):
                assert q[key] == pytest.approx(runs[best]["quality"]["layers"][layer][key], abs=1e-4), (layer, key)


def test_better_is_the_stated_rule():
    """`better` by hand-made summaries: a gain beyond the margin counts; within it, 5 points fewer dead features count
    only at no more cost; neither counts where the loss with every layer replaced drifts past 0.02 of the gap."""
    old = {"variance_explained": 0.96, "dead_fraction": 0.5, "loss_recovered_all": 1.001}
    assert train.better({**old, "variance_explained": 0.963}, old, same_cost=False)
    assert not train.better({**old, "variance_explained": 0.9615}, old, same_cost=True)
    assert train.better({**old, "variance_explained": 0.959, "dead_fraction": 0.44}, old, same_cost=True)
    assert not train.better({**old, "variance_explained": 0.959, "dead_fraction": 0.44}, old, same_cost=False)
    assert not train.better({**old, "variance_explained": 0.99, "loss_recovered_all": 0.97}, old, same_cost=True)
    assert train.better({**old, "variance_explained": 0.99, "loss_recovered_all": 1.015}, old, same_cost=True)


def test_better_reports_the_response_explained_without_counting_it():
    """The response explained does not move the choice either way (better's docstring says why): the same summaries are
    judged alike with it and without it, whichever side gains it."""
    old = {"variance_explained": 0.96, "dead_fraction": 0.5, "loss_recovered_all": 1.001}
    for new, kept in (({**old, "variance_explained": 0.963}, True), ({**old, "variance_explained": 0.956}, False)):
        for gained in (-0.3, 0.0, 0.3):
            assert train.better({**new, "response_explained": 0.5 + gained}, {**old, "response_explained": 0.5}, False) == kept
        assert train.better(new, old, False) == kept


def test_same_cost_counts_the_jacobian_term():
    base = train.CONFIG
    assert train.same_cost(dataclasses.replace(base, dead_after=20_000), base)
    assert not train.same_cost(dataclasses.replace(base, jacobian=0.1), base)
    assert not train.same_cost(dataclasses.replace(base, tokens=2 * base.tokens), base)
    assert train.same_cost(base, dataclasses.replace(base, jacobian=0.1))


def test_the_encoder_can_start_at_the_decoders_transpose():
    x, y = torch.randn(64, 16), torch.randn(64, 16)
    cfg = dataclasses.replace(train.CONFIG, width=32, k=4, enc_init="decoder")
    t = train.Trainer(0, x, y, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(t.W_enc.detach(), t.W_dec.detach().T)
    assert torch.allclose(t.W_dec.norm(dim=1), torch.ones(32))
    plain = train.Trainer(0, x, y, dataclasses.replace(cfg, enc_init="random"), torch.Generator().manual_seed(0))
    assert torch.equal(plain.W_dec, t.W_dec) and not torch.equal(plain.W_enc, t.W_enc)


def test_a_short_training_run_learns(circuits):
    cfg = dataclasses.replace(train.CONFIG, width=128, k=8, tokens=40 * 1024, warmup=5, buffer=8192)
    tcs, records = train.train(circuits, cfg, log=lambda *_: None)
    for layer, rec in records.items():
        first, last = rec["log"][0]["fvu"], rec["log"][-1]["fvu"]
        assert last < 0.7 * first, (layer, first, last)  # measured: 1.00 -> 0.52 (layer 1), the MLP harder to copy
        assert tcs[layer].W_skip is not None and tcs[layer].k == 8


def test_the_stories_model_trains_on_its_own_stories_and_its_tasks_can_be_checked(tmp_path):
    """`python -m workbench.train transcoders stories` (what the lead runs on the retrained model), a few steps: the data
    are the stories world's (no token outside its closed vocabulary, held-out stories differ from training ones), the
    folder loads as a transcoder set, and the task check reads the model's shipped induction dataset with them."""
    from workbench import task_circuits
    from workbench.model import load_model
    from workbench.transcoder import load_set

    stories = load_model("stories")
    assert train.is_stories(stories)
    unk = stories.tokenizer.unk_token_id
    rows = next(train.sequences(stories, 0, 4))
    name, held, scored = train.heldout(stories)
    assert rows.shape == (4, stories.info.n_ctx) and "held-out stories" in name and scored.all()
    assert unk is None or not ((rows == unk).any() or (held == unk).any())  # English text would be full of unknown words
    assert not torch.equal(held[:4], rows)
    cfg = dataclasses.replace(train.CONFIG, width=64, k=4, tokens=512, batch=256, windows=8, buffer=512, warmup=1)
    card = train.build("stories", cfg, tmp_path, log=lambda *_: None)
    assert set(card["quality"]["layers"]) == set(range(stories.info.n_layers))
    tcs = load_set(tmp_path)
    assert sorted(tcs) == list(range(stories.info.n_layers)) and tcs[0].d_sae == 64
    c = task_circuits.check_task(stories, "induction", task_circuits.CheckConfig(pairs=1, random_draws=2), tcs=tcs)
    assert c.source == "stories/tasks/induction.json" and len(c.pairs) == 1
    # a search of one given step on top of what was just shipped: the Jacobian term trains on the real model, its
    # response explained is measured, and the choice is `better`'s
    from workbench.errors import InputError

    with pytest.raises(InputError, match="no search step"):
        train.search("stories", tmp_path, only=("no such step",))
    found = train.search("stories", tmp_path, log=lambda *_: None, only=("Jacobian matching, λ 1",))
    assert [r["step"] for r in found["runs"]] == ["shipped", "Jacobian matching, λ 1"] and found["only"] == ["Jacobian matching, λ 1"]
    assert found["runs"][1]["config"] == {**dataclasses.asdict(train.recipe("stories", cfg)), "jacobian": 1.0}
    assert all(q["response_explained"] <= 1 for q in found["runs"][1]["quality"]["layers"].values())  # 64 features, 512 tokens: any
    _replay(found)
    assert "only the steps *Jacobian matching, λ 1*" in train._search_text(found)
