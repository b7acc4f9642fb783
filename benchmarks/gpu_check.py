"""`make gpu-check`: on a machine with a GPU, in one call of under 8 minutes, what the README reports about it.

1. The tests that exercise the numbers (engine, lens, patching, attribution and IG, SAEs, the
   patching methods, reduced precision and offloading, the cost model) with every model loaded on
   the device (WORKBENCH_DEVICE): the pages' AppTests are left out, they test Streamlit, not the device.
2. `python -m benchmarks pages` on a GPT-2-small shape: each page's work in forward passes and time.
3. The Llama-3.2-1B shape (benchmarks/bench_sizes.py): load and every main view in bfloat16, time and
   peak device memory, and the largest difference to float32.

Writes benchmarks/results/gpu-check.md and prints it. Without a GPU: `make gpu-check DEVICE=cpu`
runs the same steps on the CPU (slower; `--sizes pythia-410m` keeps it short).

    python -m benchmarks.gpu_check [--device cuda] [--sizes llama-3.2-1b] [--no-tests]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_engine.py",
    "tests/test_lens.py",
    "tests/test_patching.py",
    "tests/test_attribution.py",
    "tests/test_ig.py",
    "tests/test_sae.py",
    "tests/test_methods.py",
    "tests/test_precision.py",
    "tests/test_cost.py",
]
TEST_LIMIT_S = 240


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", nargs="*", default=["llama-3.2-1b"])
    p.add_argument("--no-tests", action="store_true")
    args = p.parse_args(argv)
    os.environ["WORKBENCH_DEVICE"] = args.device
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; run `make gpu-check DEVICE=cpu` to check the script on the CPU", file=sys.stderr)
        return 2
    lines = [f"# gpu-check, device {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""), ""]
    start = time.perf_counter()
    status = 0
    if not args.no_tests:
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not page and not app", *TESTS]
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TEST_LIMIT_S)
            summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
            status = done.returncode
            failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
        except subprocess.TimeoutExpired:
            summary, status, failed = f"stopped after {TEST_LIMIT_S} s", 1, []
        lines += [f"## Tests on {args.device} ({time.perf_counter() - t:.0f} s)", "", summary, *failed, ""]
        print("\n".join(lines[-4 - len(failed) :]), flush=True)

    from benchmarks import bench_pages, bench_sizes
    from benchmarks.shapes import build

    with tempfile.TemporaryDirectory() as tmp:
        build("gpt2-small", Path(tmp))
        ref_s, ref_flops, visits, once = bench_pages.measure(tmp)
    lines += ["## Pages, GPT-2-small shape", "", bench_pages.table(ref_s, ref_flops, visits, once), ""]
    for shape in args.sizes:
        r = bench_sizes.measure_shape(shape, "bfloat16", args.device, check=True)
        lines += [
            f"## {shape} shape ({r['params'] / 1e9:.2f} B parameters), bfloat16 on {args.device}",
            "",
            f"load {r['load_s']:.1f} s, {r['load_mb']:,.0f} MB",
            "",
            "| view | seconds | peak MB | largest difference to float32 | float32's largest value |",
            "|---|---|---|---|---|",
            *(
                f"| {k} | {v['s']:.2f} | {v['mb']:,.0f} | {r['max_difference_vs_float32'].get(k, float('nan')):.4f} | {r['scale_float32'].get(k, float('nan')):.4f} |"
                for k, v in r["views"].items()
            ),
            "",
        ]
    lines.append(f"Whole check: {time.perf_counter() - start:.0f} s.")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "gpu-check.md").write_text("\n".join(lines) + "\n")
    (out / "gpu-check.json").write_text(json.dumps({"device": args.device, "tests_status": status}) + "\n")
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
