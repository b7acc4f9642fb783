"""python -m workbench.train {english,circuits} -- retrain a shipped model (and write its card);
python -m workbench.train lens MODEL [--text FILE] -- train a tuned lens for a model and save it beside its weights."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m workbench.train", description=__doc__)
    p.add_argument("what", choices=["english", "circuits", "lens"])
    p.add_argument("model", nargs="?", default="english", help="with lens: the model (shipped name or folder)")
    p.add_argument(
        "--text", type=Path, help="with lens: training text (default: the model's heldout_sample.txt, or synthetic copies for circuits)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: models/<model>)")
    p.add_argument("--steps", type=int, help="override the number of training steps")
    p.add_argument("--threads", type=int, help="override the number of CPU threads")
    p.add_argument("--seed", type=int, help="override the seed")
    p.add_argument("--trained", action="store_true", help="circuits: train on the copying task instead of writing the constructed weights")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "workbench-corpus", help="corpus download cache")
    args = p.parse_args(argv)
    if args.what == "lens":
        from workbench.train import tuned_lens

        print(json.dumps(tuned_lens.build(args.model, args.text, steps=args.steps or 300, seed=args.seed or 0), indent=1))
        return
    out = args.out or ROOT / "models" / args.what
    overrides = {k: v for k, v in {"steps": args.steps, "threads": args.threads, "seed": args.seed}.items() if v is not None}
    if args.what == "english":
        from workbench.train import english

        english.build(out, args.cache, dataclasses.replace(english.ENGLISH, **overrides))
    elif args.trained:
        from workbench.train import circuits

        circuits.build(out, dataclasses.replace(circuits.CIRCUITS, **overrides))
    else:
        from workbench.train import constructed

        constructed.build(out)
    from workbench.train import card, tuned_lens

    tuned_lens.build(str(out))
    card.write(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
