"""bf16 autocast on this CPU, measured on the stories recipe: speed and loss against fp32 from one initialisation.

The model-organisms issue asks that bf16 autocast (this CPU has AVX-512 BF16) be measured first and used where it is
faster at equal loss. `training` measures it; `sentence` is the stories card's line on it.
"""

from __future__ import annotations

import torch


def sentence(b: dict, training: dict) -> str:
    """The card's line on bf16 autocast (training's measurement), and what the shipped run used."""
    if "curve" not in b:  # an older card: one timing only
        return f"bf16 autocast on this CPU: {b['bf16_s_per_step']:.3f} s a step against {b['fp32_s_per_step']:.3f} s in fp32; equal loss was not measured."
    first, last = b["curve"][0], b["curve"][-1]
    gap = last["bf16"] - last["fp32"]
    faster, equal = b["bf16_over_fp32"] < 0.9, abs(gap) <= 0.01 * last["fp32"]
    used = "bf16 autocast" if training.get("recipe", {}).get("model", {}).get("autocast") else "fp32"
    verdict = "faster at equal loss" if faster and equal else "faster, but not at equal loss" if faster else "not faster"
    return (
        f"bf16 autocast on this CPU, measured on this recipe's stories stage trained twice from one initialisation on the same "
        f"batches ({b['steps']} steps, timed alternately step by step): {b['bf16_s_per_step']:.3f} s a step against "
        f"{b['fp32_s_per_step']:.3f} s in fp32 (ratio {b['bf16_over_fp32']:.2f}); loss on unseen stories "
        f"{first['fp32']:.3f} → {last['fp32']:.3f} in fp32, {first['bf16']:.3f} → {last['bf16']:.3f} under bf16 "
        f"(steps {first['step']} → {last['step']}): {verdict}. The shipped run used {used}"
        + (
            ": it predates this measurement, and `TrainConfig(autocast=True)` (workbench/train/common.py) turns bf16 on for a new run."
            if used == "fp32" and faster and equal
            else "."
        )
    )


def training(steps: int = 400, eval_every: int = 100, seed: int = 0) -> dict:
    """The shipped recipe's stories stage trained from one initialisation in fp32 and under bf16 autocast, side by side.

    Both models see the same batches (stories.stages' last stage: stories, answer rows and copies) and
    the same learning rates; their steps (forward, backward, clip, AdamW) are timed alternately, step by
    step, because the machine is shared, and the ratio is of the medians. Every `eval_every` steps both
    are scored, in fp32, on the same unseen story rows: equal loss means bf16 lost nothing."""
    import copy
    import statistics
    import time

    from transformers import GPT2LMHeadModel

    from workbench.train import common, stories

    w = stories.world()
    tok = stories.tokenizer(w)
    cfg = type(stories.shape())(**{**stories.shape().__dict__, "vocab_size": len(tok)})
    torch.manual_seed(cfg.seed)
    first = GPT2LMHeadModel(common.gpt2_config(cfg, tok.bos_token_id, tok.eos_token_id))
    models = {"fp32": first, "bf16": copy.deepcopy(first)}
    opts = {mode: common.optimizer(m, cfg.weight_decay) for mode, m in models.items()}
    stage = stories.stages(stories.Recipe(), cfg, tok, w)[-1]
    unseen = stories.story_rows(tok, w, 16, cfg.n_positions, seed=10**6 + seed)  # (16, pos) rows no step draws
    torch.set_num_threads(cfg.threads)
    times: dict[str, list[float]] = {mode: [] for mode in models}
    curve = []
    for step in range(steps):
        parts = stage.batch(common.step_generator(cfg.seed + seed, step))
        lr = common.stage_lr(stage, step)
        for mode, model in models.items():
            for group in opts[mode].param_groups:
                group["lr"] = lr
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = sum(p.weight * common.masked_loss(model, p.ids, p.mask, p.vocab).float() for p in parts)
            opts[mode].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[mode].step()
            times[mode].append(time.perf_counter() - start)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            with torch.no_grad():
                held = {mode: round(float(common.masked_loss(m, unseen, torch.ones(unseen.shape[0], unseen.shape[1] - 1, dtype=torch.bool))), 4)
                        for mode, m in models.items()}  # fmt: skip
            curve.append({"step": step + 1, **held})
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    return {
        "fp32_s_per_step": round(fp32, 4),
        "bf16_s_per_step": round(bf16, 4),
        "bf16_over_fp32": round(bf16 / fp32, 3),
        "steps": steps,
        "curve": curve,
    }
