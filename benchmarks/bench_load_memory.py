"""Memory at load on a GPT-2-small shape: raw weights, compatibility mode with and without what load_model gives back.

Each case runs in a fresh process (a process's peak resident size only grows), after importing
torch, transformers and transformer-lens: the figures are the peak and the held resident memory
above that start, in MB, and as a ratio to the float32 weights (124 M × 4 bytes). "as before"
turns off `model._release_after_processing` (GPT-2's fused QKV weight freed, the processing's
freed copies handed back to the OS), to compare in the same run. The last cases: the head
constants (conventions.head_constants), which load the raw twin for four tokens, with the twin
kept on the model (as before) or not.

    python -m benchmarks.bench_load_memory
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Row

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "raw weights, float32": dict(compatibility_mode=False),
    "compatibility mode, float32, as before": dict(release=False),
    "compatibility mode, float32": dict(),
    "compatibility mode, bfloat16": dict(dtype="bfloat16"),
    "compatibility mode + head constants, twin kept (as before)": dict(constants=True, keep_twin=True),
    "compatibility mode + head constants": dict(constants=True),
}

CHILD = """
import ctypes, gc, json, sys
from pathlib import Path
import torch, transformers, transformer_lens  # the start: libraries imported
from workbench import conventions, model as wm

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

folder, case = sys.argv[1], json.loads(sys.argv[2])
if not case.get("release", True):
    wm._release_after_processing = lambda bridge, model_type: None
if case.get("keep_twin"):
    real = conventions.raw_twin
    conventions.raw_twin = lambda model, keep=True: real(model, keep=True)
gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
Path("/proc/self/clear_refs").write_text("5")
start = status("VmRSS")
m = wm.load_model(folder, dtype=case.get("dtype", "float32"), compatibility_mode=case.get("compatibility_mode", True))
if case.get("constants"):
    conventions.head_constants(m)
gc.collect()
print(json.dumps({"peak": status("VmHWM") - start, "held": status("VmRSS") - start, "params": m.info.n_params}))
"""


def measure(folder: str, case: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, folder, json.dumps(case)], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> str:
    from benchmarks.shapes import build

    lines = [
        "| load (GPT-2-small shape, CPU) | peak MB above the start | held MB | peak / float32 weights | held / float32 weights |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        build("gpt2-small", Path(tmp))
        for name, case in CASES.items():
            r = measure(tmp, case)
            weights = r["params"] * 4 / 2**20
            lines.append(f"| {name} | {r['peak']:,.0f} | {r['held']:,.0f} | {r['peak'] / weights:.2f} | {r['held'] / weights:.2f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def run(quick: bool = False) -> list[Row]:
    print(main())
    return []


if __name__ == "__main__":
    print(main())
