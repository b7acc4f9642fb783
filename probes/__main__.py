"""workbench-probe [NAME [options]] (or python -m probes in a checkout): list the probes, or run one (NAME --help)."""

from __future__ import annotations

import signal
import sys

from . import attention, attribution, features, graph, heads, induction_study, intervene, lens, patching, scoreboard, tasks, training
from . import attribution_graph as attribution_graph_probe

# The probe registry: the one list a new view adds a line to.
PROBES = {
    "heads": heads,
    "attention": attention,
    "lens": lens,
    "patching": patching,
    "attribution": attribution,
    "induction-study": induction_study,
    "training": training,
    "graph": graph,
    "intervene": intervene,
    "scoreboard": scoreboard,
    "features": features,
    "attribution-graph": attribution_graph_probe,
    "tasks": tasks,
}


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program: Ctrl-C stops the probe (keeping the finished part) even when started by a
        # parent that ignores SIGINT, as a non-interactive shell does for `&` jobs: Python then leaves it ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(__doc__.strip() + "\n\nprobes:")
        for name, module in PROBES.items():
            doc = (module.__doc__ or "").strip().replace("\n", " ")
            print(f"  {name:<16} {doc}")
        return 0
    if argv[0] not in PROBES:
        print(f"error: unknown probe '{argv[0]}'; choose one of {', '.join(PROBES)}", file=sys.stderr)
        return 2
    return PROBES[argv[0]].main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
