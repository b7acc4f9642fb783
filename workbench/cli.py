"""`workbench-app`: serves the app from any folder, checkout or installed package (`pip install .`).

The probes' command, `workbench-probe`, is probes/__main__.py. This module starts Streamlit as a
separate process and never imports it, so that workbench/ui/ stays the only package of the library that does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def app_script() -> Path:
    """The home page: `workbench_app/app.py` next to the installed library, else the checkout's app.py."""
    for script in (HERE.parent / "workbench_app" / "app.py", HERE.parent / "app.py"):
        if script.is_file():
            return script
    raise FileNotFoundError(f"no app.py next to {HERE}: reinstall the workbench (pip install .)")


def app_command(port: int = 8501, extra: list[str] | None = None) -> list[str]:
    """The `streamlit run` command line: loopback only, XSRF protection on, no usage statistics (as .streamlit/config.toml)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app_script()),
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
        "--server.enableXsrfProtection", "true", "--browser.gatherUsageStats", "false",
        *(extra or []),
    ]  # fmt: skip


def app(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="workbench-app",
        description="Serves the interpretability workbench on http://127.0.0.1:PORT. Other options go to `streamlit run`.",
    )
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    parser.add_argument("--device", help="where models load: cpu (default), cuda, cuda:N or auto (sets WORKBENCH_DEVICE)")
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    command = app_command(args.port, extra)
    if args.print:
        print(" ".join(command))
        return 0
    print(f"serving the workbench on http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        env = (
            os.environ
            | {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
            | ({"WORKBENCH_DEVICE": args.device} if args.device else {})
        )
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(app())
