"""Figure and data export, written once for the app and the probes: PNG, SVG, HTML, CSV, JSON.

PNG and SVG go through kaleido, which drives a headless Chromium (Debian's `chromium`; kaleido
finds /usr/bin/chromium by itself). Starting a browser per image costs ~5 s, so one kaleido
server is kept per process and every export goes through it, one at a time. Without a Chromium
the export says so in one sentence instead of hanging; HTML, CSV and JSON need no browser.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import shutil
import threading

import torch

from workbench.errors import InputError

FORMATS = ("png", "svg", "html")
_lock = threading.Lock()
_server_started = False
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def browser() -> str | None:
    """Path of a Chromium kaleido can drive, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def safe_name(name: str) -> str:
    """A file name with only letters, digits, '.', '_' and '-' (never a path)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    return cleaned[:100] or "figure"


def _ensure_server() -> None:
    global _server_started
    if not _server_started:
        import kaleido

        kaleido.start_sync_server(mathjax=False, timeout=60, silence_warnings=True)
        _server_started = True


def figure_bytes(fig, fmt: str, scale: float = 2.0) -> bytes:
    """The figure as PNG, SVG or standalone HTML (plotly.js inlined, so it opens offline)."""
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
    if fmt not in FORMATS:
        raise InputError(f"unknown figure format '{fmt}': use one of {', '.join(FORMATS)}")
    if browser() is None:
        raise InputError(
            f"{fmt.upper()} export needs a Chromium browser for kaleido: install it with `apt-get install chromium` (HTML export works without it)"
        )
    with _lock:
        _ensure_server()
        try:
            return fig.to_image(format=fmt, scale=scale if fmt == "png" else 1)
        except Exception as err:
            raise InputError(
                f"{fmt.upper()} export failed in kaleido/Chromium: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err


def plain(value):
    """JSON-ready copy of a result: dataclasses, tensors, tuples and NaN made plain."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return plain(value.tolist())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value) -> str:
    return json.dumps(plain(value), indent=1, ensure_ascii=False)


def to_csv(rows: list[dict]) -> str:
    """Rows (dicts with the same keys) as CSV text."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
