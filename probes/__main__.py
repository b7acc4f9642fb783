"""python -m probes [NAME [options]]: list the probes, or run one (python -m probes NAME --help)."""

from __future__ import annotations

import importlib
import sys

PROBES = {
    "heads": "probes.heads",
    "attention": "probes.attention",
    "lens": "probes.lens",
    "patching": "probes.patching",
    "attribution": "probes.attribution",
    "induction-study": "probes.induction_study",
    "training": "probes.training",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(__doc__.strip() + "\n\nprobes:")
        for name, module in PROBES.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().replace("\n", " ")
            print(f"  {name:<16} {doc}")
        return 0
    if argv[0] not in PROBES:
        print(f"error: unknown probe '{argv[0]}'; choose one of {', '.join(PROBES)}", file=sys.stderr)
        return 2
    return importlib.import_module(PROBES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
