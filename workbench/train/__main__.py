"""python -m workbench.train {english,circuits,answer-key,stories} -- retrain a shipped model (and write its card);
python -m workbench.train stories-english [--out DIR] -- the stories recipe with public-domain English mixed in
(stories_english.py; default out: runs/stories-english/model, not shipped: the stories card's table of what was tried reads it);
python -m workbench.train search -- the short measured runs that chose the English recipe;
python -m workbench.train lens MODEL [--text FILE] -- train a tuned lens for a model and save it beside its weights;
python -m workbench.train card MODEL -- rewrite a shipped model's card from its weights;
python -m workbench.train sae [MODEL] -- TopK SAEs on its residual stream, measured, with dashboards (models/MODEL/sae/);
python -m workbench.train sae-search [MODEL] -- the short measured runs that chose the SAEs' width and k;
python -m workbench.train transcoders [MODEL] [--checks | --search] -- per-layer TopK transcoders (MLP in -> MLP out),
measured (models/MODEL/transcoders/); --checks re-measures only their card's task circuits; --search runs the recipe
search on held-out quality (search.json), `--search --only STEP` only the named steps on top of the shipped recipe;
--k, --width, --jacobian train another set (with --out DIR), and `--compare DIR` measures such a set on the shipped
set's task checks (compare.json, shown in the shipped card);
python -m workbench.train clt [MODEL] -- a cross-layer transcoder (each layer's features write to every later MLP output too),
measured (models/MODEL/transcoders-clt/).

Training runs keep their state in --run-dir (default runs/<model>): run the same command again to
resume an interrupted run where it stopped; the result is the same as an uninterrupted run."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "what",
        choices=[
            "english",
            "circuits",
            "answer-key",
            "stories",
            "stories-english",
            "search",
            "lens",
            "card",
            "sae",
            "sae-search",
            "transcoders",
            "clt",
        ],
    )
    p.add_argument("model", nargs="?", default="english", help="with lens and card: the model (shipped name or folder)")
    p.add_argument("--text", type=Path, help="with lens: training text (default: the model's held-out samples, or copying sequences)")
    p.add_argument("--out", type=Path, help="output folder (default: models/<model>)")
    p.add_argument("--run-dir", type=Path, help="where a training run keeps its resumable state (default: runs/<model>)")
    p.add_argument(
        "--steps",
        type=int,
        help="override the number of steps (circuits; English: of the English stage; stories-english: of the stories stage)",
    )
    p.add_argument("--threads", type=int, help="override the number of CPU threads")
    p.add_argument("--seed", type=int, help="override the seed")
    p.add_argument("--checks", action="store_true", help="with transcoders: re-measure only the card's task checks, training nothing")
    p.add_argument("--search", action="store_true", help="with transcoders: the recipe search on held-out quality (search.json)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STEP",
        help="with --search: only this search step (repeatable), on top of the shipped recipe",
    )
    p.add_argument("--k", type=int, help="with transcoders or clt: active features per token (default: the model's recipe)")
    p.add_argument("--width", type=int, help="with transcoders or clt: features per layer")
    p.add_argument("--jacobian", type=float, help="with transcoders: λ of the Jacobian-matching term (train/jacobian.py)")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="with transcoders: measure another transcoder set on the shipped set's checks (repeatable; compare.json)",
    )
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "workbench-corpus", help="corpus download cache")
    return p


def transcoder_config(args: argparse.Namespace):
    """The TranscoderConfig the command line asks for: CONFIG with the flags given (the model's recipe goes under them
    in train/transcoders.build)."""
    from workbench.train import transcoders

    given = {"threads": args.threads, "seed": args.seed, "tokens": args.steps and args.steps * transcoders.CONFIG.batch,
             "k": args.k, "width": args.width, "jacobian": args.jacobian}  # fmt: skip
    return dataclasses.replace(transcoders.CONFIG, **{k: v for k, v in given.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.what == "clt" and (args.compare or args.jacobian is not None):
        p.error("--compare and --jacobian go with transcoders (a cross-layer set is compared with `transcoders MODEL --compare DIR`)")
    if args.what == "lens":
        from workbench.train import tuned_lens

        print(json.dumps(tuned_lens.build(args.model, args.text, steps=300, seed=args.seed or 0), indent=1))
        return
    if args.what == "card":
        from workbench.model import resolve
        from workbench.train import card, stories_card

        folder = resolve(args.model)[1]
        if (folder / "tasks").is_dir():  # the stories model: its card measures its tasks
            stories_card.write(folder)
        else:
            card.write(folder)
        return
    if args.what in ("sae", "sae-search"):
        from workbench.model import resolve
        from workbench.train import sae

        folder = resolve(args.model)[1]
        if args.what == "sae-search":
            sae.search(args.model, args.cache, args.out or folder / "sae" / "search.json")
            return
        given = {"threads": args.threads, "seed": args.seed, "tokens": args.steps and args.steps * sae.CONFIG.batch}
        cfg = dataclasses.replace(sae.CONFIG, **{k: v for k, v in given.items() if v})
        print(json.dumps(sae.build(args.model, args.cache, cfg, args.out), indent=1)[:2000])
        return
    if args.what in ("transcoders", "clt"):
        from workbench.train import clt, transcoders

        cfg = transcoder_config(args)
        if args.compare and args.what == "transcoders":
            from workbench.train import transcoder_compare

            found = transcoder_compare.compare(args.model, args.compare, args.out)["sets"]
            print(json.dumps({s["folder"]: {n: c["passed"] for n, c in s["checks"].items()} for s in found}))
            return
        if args.search and args.what == "transcoders":
            found = transcoders.search(args.model, args.out, only=tuple(args.only))["runs"]
            print(json.dumps(next(r["config"] for r in found if r["chosen"]), indent=1))
            return
        if args.checks and args.what == "transcoders":
            checked = transcoders.refresh_checks(args.model, args.out)["task_circuits"]["tasks"]
            print(json.dumps({name: c.get("within_tolerance", c.get("error")) for name, c in checked.items()}))
            return
        build = transcoders.build if args.what == "transcoders" else clt.build
        print(json.dumps(build(args.model, cfg, args.out)["quality"], indent=1))
        return
    if args.what == "search":
        from workbench.train import search

        search.main(args.cache, args.out or ROOT / "models" / "english" / "search.json")
        return
    if args.what == "stories-english":
        from workbench.train import stories_english

        run_dir = args.run_dir or ROOT / "runs" / args.what
        recipe = dataclasses.replace(stories_english.RECIPE, **({"second_steps": args.steps} if args.steps else {}))
        stories_english.build(args.out or run_dir / "model", stories_english.english_text(args.cache), recipe, run_dir=run_dir)
        print(f"wrote {args.out or run_dir / 'model'}")
        return
    out = args.out or ROOT / "models" / args.what
    run_dir = args.run_dir or ROOT / "runs" / args.what
    overrides = {k: v for k, v in {"threads": args.threads, "seed": args.seed}.items() if v is not None}
    if args.what == "english":
        from workbench.train import english

        recipe = dataclasses.replace(english.RECIPE, model=dataclasses.replace(english.RECIPE.model, **overrides))
        if args.steps:
            recipe = dataclasses.replace(recipe, english_steps=args.steps)
        english.build(out, args.cache, recipe, run_dir, english.snapshot_steps(recipe))
    elif args.what == "circuits":
        from workbench.train import circuits

        cfg = dataclasses.replace(circuits.CIRCUITS, **overrides, **({"steps": args.steps} if args.steps else {}))
        circuits.build(out, cfg, run_dir)
    elif args.what == "stories":
        from workbench import tasks
        from workbench.train import stories, stories_card

        stories.build(out, run_dir=run_dir)
        tasks.write(out)
        stories_card.write(out)
        print(f"wrote {out}")
        return
    else:
        from workbench.train import constructed

        constructed.build(out)
    from workbench.train import card, tuned_lens

    tuned_lens.build(str(out))
    card.write(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
