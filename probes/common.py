"""What every probe shares: arguments, the output folder, figure/data writers, the manifest, errors.

A probe writes into its output folder, as it goes: figures (PNG, SVG, HTML), numbers (JSON, and
CSV for tables) and manifest.json (model and its source, prompts, settings, seed, library versions,
timings, files). Ctrl-C keeps what is finished and marks the manifest interrupted. Bad input exits
with status 2 and one line; a missing Chromium skips PNG/SVG with one line and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from workbench import examples, export
from workbench.errors import InputError
from workbench.model import LoadedModel, load_model
from workbench.runs import versions
from workbench.tokens import unknown_words


def base_parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"workbench-probe {name}", description=doc)
    p.add_argument("--model", default=None, help="shipped model name (english, circuits), a model folder, or a cached hub name")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default: out/{name})")
    p.add_argument("--spec", type=Path, default=None, help="a JSON or YAML file with the same settings (and lists of prompts or pairs)")
    p.add_argument("--seed", type=int, default=None, help="default 0, or the spec's")
    p.add_argument("--formats", default="png,svg,html", help="figure formats to write (default png,svg,html)")
    return p


def read_spec(path: Path | None) -> dict:
    if path is None:
        return {}
    if not path.exists():
        raise InputError(f"no spec file at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    except Exception as err:
        raise InputError(f"cannot read the spec {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(spec, dict):
        raise InputError(f"the spec {path} must be a mapping of settings (got {type(spec).__name__})")
    return spec


def merged(args: argparse.Namespace, spec: dict, defaults: dict) -> dict:
    """Settings: command-line values that were given, else the spec's, else the defaults."""
    out = {"seed": 0, **defaults}  # --seed defaults to None, so that a spec's seed is not overridden by it
    out.update({k.replace("-", "_"): v for k, v in spec.items()})
    out.update({k: v for k, v in vars(args).items() if v is not None and k not in ("spec", "out")})
    return out


class Output:
    """The probe's output folder and manifest."""

    def __init__(self, name: str, folder: Path | None, model: LoadedModel, settings: dict, formats: str = "png,svg,html"):
        self.folder = Path(folder or Path("out") / name)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.formats = [f for f in formats.split(",") if f]
        bad = [f for f in self.formats if f not in export.FORMATS]
        if bad:
            raise InputError(f"unknown figure format(s) {bad}: use png, svg, html")
        self.start = time.time()
        self.notes: list[str] = []
        if export.browser() is None and {"png", "svg"} & set(self.formats):
            note = "PNG/SVG skipped: no Chromium for kaleido (apt-get install chromium); HTML written instead"
            print(note, file=sys.stderr)
            self.notes.append(note)
            self.formats = [f for f in self.formats if f == "html"] or ["html"]
        self.manifest = {
            "probe": name,
            "model": {
                "name": model.info.name,
                "source": model.info.source,
                "kind": model.info.kind,
                "numeric_mode": model.info.numeric_mode,
            },
            "settings": settings,
            "versions": versions(),  # the same record every result's provenance carries
            "files": [],
            "timings": {},
            "status": "running",
        }
        self.save_manifest()

    def path(self, filename: str) -> Path:
        return self.folder / export.safe_name(filename)

    def figure(self, fig, name: str) -> None:
        for fmt in self.formats:
            target = self.path(f"{name}.{fmt}")
            target.write_bytes(export.figure_bytes(fig, fmt))
            self._file(target)

    def data(self, name: str, result, rows: list[dict] | None = None) -> None:
        target = self.path(f"{name}.json")
        target.write_text(export.to_json(result))
        self._file(target)
        if rows:
            target = self.path(f"{name}.csv")
            target.write_text(export.to_csv(rows))
            self._file(target)

    def text(self, filename: str, body: str) -> None:
        target = self.path(filename)
        target.write_text(body)
        self._file(target)

    def timing(self, step: str, seconds: float) -> None:
        self.manifest["timings"][step] = round(seconds, 3)
        self.save_manifest()

    def _file(self, target: Path) -> None:
        self.manifest["files"].append(target.name)
        self.save_manifest()

    def save_manifest(self, status: str | None = None) -> None:
        if status:
            self.manifest["status"] = status
            self.manifest["timings"]["total"] = round(time.time() - self.start, 3)
        self.manifest["notes"] = self.notes
        (self.folder / "manifest.json").write_text(json.dumps(self.manifest, indent=1, ensure_ascii=False) + "\n")


def with_examples(name: str, model: LoadedModel, settings: dict) -> dict:
    """The settings with the model's example prompt for this probe's view where none was given; a prompt with words
    the model's vocabulary lacks is kept, with a note (they read as its unknown token)."""
    out = dict(settings)
    if "prompt" in out and out["prompt"] is None:
        out["prompt"] = examples.prompt(model.info.name, name)
    if "prompts" in out and not out["prompts"]:
        out["prompts"] = [examples.prompt(model.info.name, name)]
    typed = [out.get("prompt"), *(out.get("prompts") or []), out.get("clean"), out.get("corrupted")]
    for text in (t for t in typed if isinstance(t, str)):
        unknown = unknown_words(model.tokenizer, text)
        if unknown:
            print(
                f"note: {model.info.name} does not know {', '.join(map(repr, unknown))}: read as {model.tokenizer.unk_token}",
                file=sys.stderr,
            )
    return out


def run_probe(name: str, doc: str, add_arguments, defaults: dict, body, argv: list[str] | None) -> int:
    """Parses arguments, loads the model, runs `body(model, settings, out)`; returns the exit status."""
    parser = base_parser(name, doc)
    add_arguments(parser)
    args = parser.parse_args(argv)
    out = None
    try:
        settings = merged(args, read_spec(args.spec), defaults)
        model = load_model(settings.get("model"))
        settings = with_examples(name, model, settings)
        out = Output(
            name,
            args.out or (Path(settings["out"]) if settings.get("out") else None),
            model,
            settings,
            settings.get("formats", "png,svg,html"),
        )
        body(model, settings, out)
        out.save_manifest("done")
        print(f"wrote {out.folder}/ ({len(out.manifest['files'])} files)")
        return 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        if out is not None:
            out.save_manifest("failed")
        return 2
    except KeyboardInterrupt:
        print("interrupted: the finished part is on disk", file=sys.stderr)
        if out is not None:
            out.save_manifest("interrupted")
        return 130
