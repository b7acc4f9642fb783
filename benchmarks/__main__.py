"""python -m benchmarks [--quick] [names...]: run the benchmarks, print a table, write benchmarks/results/latest.json."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BENCHMARKS = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], help=f"which to run (default: all of {', '.join(BENCHMARKS)})")
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke test, not a measurement")
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        rows.extend(module.run(quick=args.quick))
    # ratio: ours / reference (below 1: ours is faster); speed-up: reference / ours
    print(f"{'benchmark':<10} {'case':<24} {'reference':<28} {'ref ms':>9} {'ours':<38} {'ours ms':>9} {'ratio':>7} {'speed-up':>8}")
    for r in rows:
        print(
            f"{r.benchmark:<10} {r.case:<24} {r.reference:<28} {r.reference_s * 1e3:>9.2f} {r.ours:<38} {r.ours_s * 1e3:>9.2f}"
            f" {r.ratio:>6.2f}x {1 / r.ratio:>7.1f}x"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    record = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "quick": args.quick,
        "rows": [dataclasses.asdict(r) | {"ratio": r.ratio} for r in rows],
    }
    (out / "latest.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out / 'latest.json'}")


if __name__ == "__main__":
    main()
