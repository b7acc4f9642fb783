"""Short measured runs that chose the English model's recipe: `python -m workbench.train search`.

Each run trains from scratch for a fixed wall-clock budget on this machine (what matters when the
whole training budget is two hours of two cores) and is measured the same way: bits per character
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
    # (name, kind, layers, width, heads, vocab)
    ("4x128, BPE 4,096", "english", 4, 128, 4, 4096),
    ("4x128, BPE 2,048", "english", 4, 128, 4, 2048),
    ("2x256, BPE 4,096", "english", 2, 256, 4, 4096),
    ("2x256 copying curriculum, pool 96", "copy", 2, 256, 4, 4096),
    ("4x128 copying curriculum, pool 96", "copy", 4, 128, 4, 4096),
)


def one_run(name, kind, layers, width, heads, vocab, data, seconds: float, log=print) -> dict:
    tokenizer, train_ids, heldout_ids = data[vocab]
    cfg = dataclasses.replace(english.RECIPE.model, n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab)
    bos = tokenizer.convert_tokens_to_ids(english.EOT)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(common.gpt2_config(cfg, bos, bos))
    recipe = english.Recipe(model=cfg, curriculum=((96, 100_000),) if kind == "copy" else (), english_steps=100_000, mix_copy_batch=0)
    stage = english.stages(recipe, train_ids, bos, vocab)[0]
    torch.set_num_threads(cfg.threads)
    opt = common._optimizer(model, cfg.weight_decay)
    model.train()
    began, step = time.time(), 0
    while time.time() - began < seconds:
        for group in opt.param_groups:
            group["lr"] = 2e-3 if kind == "copy" else common.stage_lr(dataclasses.replace(stage, steps=10**9, warmup=100), step)
        parts = stage.batch(common.step_generator(0, step))
        loss = sum(p.weight * common.masked_loss(model, p.ids, p.mask, p.vocab) for p in parts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    model.eval()
    out = {"name": name, "kind": kind, "layers": layers, "width": width, "heads": heads, "vocab": vocab, "seconds": seconds, "steps": step}
    out["last_train_loss"] = round(loss.item(), 4)
    if kind == "english":
        held = english.stream_loss(model, tokenizer, heldout_ids, cfg.n_positions, max_windows=48)
        out["heldout_bpc"] = round(held["bits_per_char"], 4)
    else:
        out |= english.induction_check(model, vocab, bos, n=20, seqs=8)
    log(json.dumps(out))
    return out


def main(cache: Path, out: Path, seconds: float = 150.0) -> list[dict]:
    data = {}
    for vocab in sorted({r[5] for r in RUNS}):
        tokenizer, train_ids, heldout_ids, *_ = english.prepare(cache, vocab, english.RECIPE.model.n_positions)
        data[vocab] = (tokenizer, train_ids, heldout_ids)
    results = []
    for run in RUNS:
        results.append(one_run(*run, data=data, seconds=seconds))
        out.write_text(json.dumps({"seconds_per_run": seconds, "runs": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    import sys

    main(Path.home() / ".cache" / "workbench-corpus", Path(sys.argv[1]), float(sys.argv[2]))
