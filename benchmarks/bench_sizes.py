"""Large shapes with random weights: load and every main view, time and peak memory, in reduced precision.

Shapes (benchmarks/shapes.py): Pythia-410M, a Llama-3.2-1B shape (16 × 2,048, GQA 32/8, vocabulary
128,256), a Gemma-2-2B shape. Each is written once in bfloat16 to a temporary folder and loaded
with raw weights (compatibility mode's weight processing peaks at ~16 bytes a parameter: 20 GB
for the 1B shape, more than this shared machine gives one process; model.COMPATIBILITY_PEAK_BYTES).
Views on a 10-token prompt (and its corrupted twin): the forward pass with every hook cached, attention
patterns, the logit lens, the residual patching sweep (all cells) and integrated gradients (4
steps). Memory: the process's peak resident size above what it held before (CPU, Linux), or the
device's peak allocation (CUDA). With `--check` (the 1B shape by default in gpu-check) the same
views in float32 give the reference that bfloat16 is compared with, within the README's tolerances.

    python -m benchmarks.bench_sizes [--shapes llama-3.2-1b ...] [--dtype bfloat16] [--device cpu] [--check]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Row
from benchmarks.shapes import SHAPES, build

MB = 2**20
DEFAULT_SHAPES = ("pythia-410m", "llama-3.2-1b", "gemma-2-2b")
# 10 tokens with the English tokenizer (BOS first), one word apart: the patching sweep runs every layer x position
CLEAN, CORRUPTED = "Jane walked to the old whale by the", "Jane walked to the old woman by the"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measured(fn, device: str) -> tuple[object, float, int]:
    """(result, seconds, peak extra bytes) of fn()."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        before = _status("VmRSS")
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status("VmHWM")
    return out, seconds, peak - before


VIEWS = ("forward", "attention", "lens", "patching", "ig")
PLAIN = "plain forward"  # the reference: one forward of the prompt through the loaded model, no hooks, nothing kept


def views(model, which: tuple[str, ...] = VIEWS) -> dict[str, tuple[object, float, int]]:
    """Each view's (numbers to compare, seconds, peak extra bytes) on one prompt; `which`: a subset of VIEWS."""
    from workbench import attention, attribution, lens, patching, tasks
    from workbench.runs import all_hook_names, encode, hook_names, run_prompt, run_tokens

    clean, corrupted = CLEAN, CORRUPTED
    out = {}
    device = model.info.device
    ids = encode(model, clean)[0][None]  # (1, pos)
    run_tokens(model, ids)  # the first call pages the mapped weights in: not part of any view
    out[PLAIN] = measured(lambda: run_tokens(model, ids)[0][0, -1].float().cpu(), device)
    print(f"    {PLAIN:<22} {out[PLAIN][1]:8.2f} s  {out[PLAIN][2] / MB:8,.0f} MB", flush=True)

    def run(key, name, fn):
        if key not in which:
            return
        model.run_cache.clear()
        out[name] = measured(fn, device)
        s, b = out[name][1], out[name][2]
        ratio = f"{s / out[PLAIN][1]:7.1f}x the plain forward's time"
        print(f"    {name:<22} {s:8.2f} s  {b / MB:8,.0f} MB  {ratio}", flush=True)

    run(
        "forward", "forward, every hook", lambda: run_prompt(model, clean, all_hook_names(model), truncate=True).logits[0, -1].float().cpu()
    )
    run(
        "attention",
        "attention patterns",
        lambda: attention.patterns_of(run_prompt(model, clean, hook_names(model, "attn.hook_pattern"))).pattern,
    )
    run("lens", "logit lens", lambda: lens.lens(model, clean, k=5).top_probs)
    answers, wrongs = tasks.candidate_answers(model, clean, corrupted) if "patching" in which else ({0: 0}, {0: 0})
    pair = tasks.Pair(clean, corrupted, next(iter(answers.values())), next(iter(wrongs.values())))
    run("patching", "patching sweep (resid)", lambda: patching.sweep(model, pair, "resid_pre", "denoising").values)
    run(
        "ig",
        "integrated gradients",
        lambda: attribution.input_attribution(model, clean, attribution.Answer((500,)), steps=4).scores,
    )
    return out


def measure_shape(
    shape: str, dtype: str, device: str, check: bool, which: tuple[str, ...] = VIEWS, check_views: tuple[str, ...] | None = None
) -> dict:
    """One shape: load and `which` views in `dtype`; with `check`, `check_views` (default: the same) in float32 too."""
    from workbench.model import load_model

    record: dict = {"shape": shape, "dtype": dtype, "device": device}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        build(shape, Path(tmp), dtype="bfloat16")
        record["build_s"] = time.perf_counter() - t
        model, load_s, load_b = measured(lambda: load_model(tmp, device=device, dtype=dtype, compatibility_mode=False), device)
        record |= {"params": model.info.n_params, "load_s": load_s, "load_mb": load_b / MB}
        print(f"  {shape}: {model.info.n_params / 1e9:.2f} B parameters, {dtype} on {device}: load {load_s:.1f} s, {load_b / MB:,.0f} MB")
        found = views(model, which)
        record["views"] = {k: {"s": s, "mb": b / MB} for k, (_, s, b) in found.items()}
        print(table(record), flush=True)
        del model
        gc.collect()
        if check:
            print("  float32 reference:")
            ref = load_model(tmp, device=device, dtype="float32", compatibility_mode=False)
            reference = views(ref, check_views or which)
            record["max_difference_vs_float32"] = {
                k: float((found[k][0].float() - reference[k][0].float()).nan_to_num().abs().max()) for k in reference
            }
            record["scale_float32"] = {k: float(reference[k][0].float().nan_to_num().abs().max()) for k in reference}
            print("  largest difference to float32:", json.dumps({k: round(v, 4) for k, v in record["max_difference_vs_float32"].items()}))
            del ref
            gc.collect()
    return record


def table(record: dict) -> str:
    """The views of one shape as a markdown table: seconds as a ratio to the plain forward, peak memory as a ratio to the weights.

    Memory is against the weights, not the plain forward: a 10-token forward holds a few MB above
    the weights, so ratios to it would be noise.
    """
    views = record["views"]
    plain = views[PLAIN]
    weights_mb = record["params"] * torch.tensor([], dtype=getattr(torch, record["dtype"])).element_size() / MB
    lines = [
        f"{record['shape']} ({record['params'] / 1e9:.2f} B parameters), {record['dtype']} on {record['device']}, raw weights "
        f"({weights_mb:,.0f} MB): load {record['load_s']:.1f} s, {record['load_mb']:,.0f} MB; plain forward {plain['s']:.2f} s",
        "",
        "| view | seconds | time / plain forward | peak memory above the loaded model (MB) | that / the weights |",
        "|---|---|---|---|---|",
    ]
    for k, v in views.items():
        lines.append(f"| {k} | {v['s']:.2f} | {v['s'] / plain['s']:.1f} | {v['mb']:,.0f} | {v['mb'] / weights_mb:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_sizes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="*", default=list(DEFAULT_SHAPES), choices=SHAPES)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device", default=os.environ.get("WORKBENCH_DEVICE", "cpu"))
    p.add_argument("--check", action="store_true", help="also run float32 and report the largest differences")
    p.add_argument("--views", nargs="*", default=list(VIEWS), choices=VIEWS)
    p.add_argument("--check-views", nargs="*", choices=VIEWS, help="the views compared with float32 (default: --views)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(True)
    records = [
        measure_shape(s, args.dtype, args.device, args.check, tuple(args.views), args.check_views and tuple(args.check_views))
        for s in args.shapes
    ]
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "sizes.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {out / 'sizes.json'}")
    return records


def run(quick: bool = False) -> list[Row]:
    """In `python -m benchmarks`: the 1B shape only (the others: run this module directly)."""
    rows = []
    for r in main(["--shapes", "llama-3.2-1b"]):
        forward = r["views"]["forward, every hook"]["s"]
        rows += [
            Row("sizes", f"{r['shape']} {k}", "forward, every hook", forward, f"{v['mb']:,.0f} MB peak", v["s"])
            for k, v in r["views"].items()
        ]
    return rows


if __name__ == "__main__":
    main()
