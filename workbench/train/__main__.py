"""python -m workbench.train {english,circuits} [--out DIR] [--steps N] -- retrain a shipped model."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m workbench.train", description=__doc__)
    p.add_argument("model", choices=["english", "circuits"])
    p.add_argument("--out", type=Path, help="output folder (default: models/<model>)")
    p.add_argument("--steps", type=int, help="override the number of training steps")
    p.add_argument("--threads", type=int, help="override the number of CPU threads")
    p.add_argument("--seed", type=int, help="override the seed")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "workbench-corpus", help="corpus download cache")
    args = p.parse_args(argv)
    out = args.out or ROOT / "models" / args.model
    overrides = {k: v for k, v in {"steps": args.steps, "threads": args.threads, "seed": args.seed}.items() if v is not None}
    if args.model == "english":
        from workbench.train import english

        english.build(out, args.cache, dataclasses.replace(english.ENGLISH, **overrides))
    else:
        from workbench.train import circuits

        circuits.build(out, dataclasses.replace(circuits.CIRCUITS, **overrides))
    from workbench.train import card

    card.write(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
