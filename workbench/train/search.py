"""Short measured runs that chose the English model's recipe: `python -m workbench.train search`.

Each run trains from scratch for a fixed number of steps on one thread (the machine is shared, so
wall-clock budgets would measure the neighbours; seconds per step are recorded beside), and is
measured the same way: bits per character
on 48 evenly spread windows of the held-out paragraphs (so vocabularies compare), and for the
copying curriculum, the best induction head on BOS + 50 random ids twice. The results land in
`search.json`, which the English model's card prints as a table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from workbench.train import common, english

RUNS = (
    # (name, kind, layers, width, heads, vocab, steps)
    ("4x128, BPE 4,096", "english", 4, 128, 4, 4096, 200),
    ("4x128, BPE 2,048", "english", 4, 128, 4, 2048, 200),
    ("2x256, BPE 4,096", "english", 2, 256, 4, 4096, 200),
    ("4x128 copying, pool 96", "copy", 4, 128, 4, 4096, 700),
    ("2x256 copying, pool 96", "copy", 2, 256, 4, 4096, 700),
)


def one_run(name, kind, layers, width, heads, vocab, steps, data, log=print) -> dict:
    tokenizer, train_ids, heldout_ids = data[vocab]
    cfg = dataclasses.replace(english.RECIPE.model, n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab, threads=1)
    bos = tokenizer.convert_tokens_to_ids(english.EOT)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(common.gpt2_config(cfg, bos, bos))
    recipe = english.Recipe(model=cfg, curriculum=((96, 100_000),) if kind == "copy" else (), english_steps=100_000, mix_copy_batch=0)
    stage = english.stages(recipe, train_ids, bos, vocab)[0]
    torch.set_num_threads(cfg.threads)
    opt = common.optimizer(model, cfg.weight_decay)
    model.train()
    began = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 if kind == "copy" else common.stage_lr(dataclasses.replace(stage, steps=10**9, warmup=100), step)
        parts = stage.batch(common.step_generator(0, step))
        loss = sum(p.weight * common.masked_loss(model, p.ids, p.mask, p.vocab) for p in parts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.time() - began
    model.eval()
    out = {"name": name, "kind": kind, "layers": layers, "width": width, "heads": heads, "vocab": vocab, "steps": steps}
    out |= {"seconds_per_step": round(seconds / steps, 3), "chars_per_token": round(data["chars_per_token"][vocab], 3)}
    out["last_train_loss"] = round(loss.item(), 4)
    if kind == "english":
        held = english.stream_loss(model, tokenizer, heldout_ids, cfg.n_positions, max_windows=48)
        out["heldout_bpc"] = round(held["bits_per_char"], 4)
    else:
        out |= english.induction_check(model, vocab, bos, n=20, seqs=8)
    log(json.dumps(out))
    return out


def main(cache: Path, out: Path) -> list[dict]:
    data: dict = {"chars_per_token": {}}
    for vocab in sorted({r[5] for r in RUNS}):
        tokenizer, train_ids, heldout_ids, _, _, train_text = english.prepare(cache, vocab, english.RECIPE.model.n_positions)
        data[vocab] = (tokenizer, train_ids, heldout_ids)
        data["chars_per_token"][vocab] = len(train_text) / len(train_ids)
    results = []
    for run in RUNS:
        results.append(one_run(*run, data=data))
        out.write_text(json.dumps({"runs": results}, indent=1) + "\n")
    return results


def summarise_attempt(log: Path, description: str) -> dict:
    """A stopped run's last evaluation, from its log: what the card's table of attempts shows."""
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    evaluated = [r for r in records if "induction_best_head" in r]
    last = evaluated[-1] if evaluated else records[-1]
    keep = ("step", "stage", "copy_loss", "induction_best_head", "induction_best_layer_sum", "second_copy_loss", "heldout_bpc")
    return {"attempt": description, **{k: last[k] for k in keep if k in last}}


if __name__ == "__main__":
    import sys

    main(Path.home() / ".cache" / "workbench-corpus", Path(sys.argv[1]))
