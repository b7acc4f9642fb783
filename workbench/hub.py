"""Hub models, the Hugging Face way: a hub name ("gpt2", "org/name") loads from the local cache, or downloads.

As every Hugging Face tool: a name already in the cache (huggingface_hub's layout,
models--org--name/{blobs,snapshots/<revision>,refs/main} under HF_HUB_CACHE) loads from there; a
name that is not downloads into it, with a progress bar, when the machine is online and downloads
are allowed. `HF_HUB_OFFLINE=1` (Hugging Face's switch) or `WORKBENCH_OFFLINE=1` (the workbench's)
turns downloads off; then a missing model is refused with the command that fetches it.

Only safetensors weights, configs and tokenizer files are fetched (`ALLOW_PATTERNS`): pickle
checkpoints (.bin, .pt) are never downloaded, and a repository that has no safetensors weights is
refused, as a local folder of pickles is (model.py).

On a shared server (`WORKBENCH_MODEL_ROOT` set) hub names load only from an allow-list: the names
in `WORKBENCH_HUB_ALLOW` (comma-separated) and in `<root>/hub-allow.txt` (one per line, # comments).

A gated repository (Llama, Gemma) answers with one line about the token: accept the licence on the
model's page and log in (`hf auth login`, or HF_TOKEN). The environment is read at each call (not
at import, as huggingface_hub's constants are), so a server or a test can change it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from workbench.errors import InputError

OFFLINE_SWITCH = "WORKBENCH_OFFLINE"
ALLOW_ENV = "WORKBENCH_HUB_ALLOW"
ALLOW_FILE = "hub-allow.txt"
# what a model needs, and nothing that unpickles
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
_TRUE = {"1", "on", "yes", "true"}


def offline() -> bool:
    """Whether downloads are off: HF_HUB_OFFLINE (Hugging Face's switch, as huggingface_hub reads it) or WORKBENCH_OFFLINE."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", OFFLINE_SWITCH))


def is_hub_name(name: str) -> bool:
    """'gpt2' or 'org/name' with the characters the hub allows (a path with more parts or odd characters is not)."""
    parts = name.split("/")
    ok = all(p and all(c.isalnum() or c in "-_." for c in p) and not p.startswith(("-", ".")) for p in parts)
    return 1 <= len(parts) <= 2 and ok and ".." not in name


def allow_list(root: Path | None) -> set[str]:
    """The hub names a shared server loads: WORKBENCH_HUB_ALLOW and <root>/hub-allow.txt."""
    names = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
    listed = root / ALLOW_FILE if root is not None else None
    if listed is not None and listed.is_file():
        for line in listed.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.add(line)
    return names


def cache_dir() -> str | None:
    """HF_HUB_CACHE (or HF_HOME/hub) as set now; None: huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def cached(name: str) -> Path | None:
    """The cached snapshot folder of hub model `name` (refs/main), or None when it is not in the cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, cache_dir=cache_dir(), local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, a broken cache entry
        return None


def fetch(name: str, root: Path | None = None, tqdm_class: type | None = None, allow_download: bool = True) -> Path:
    """The folder of hub model `name`: from the cache, else downloaded (safetensors only) when allowed; InputError otherwise.

    `root`: a shared server's WORKBENCH_MODEL_ROOT (the allow-list applies). `tqdm_class`: the
    progress bar of the download (huggingface_hub's tqdm by default, on the console).
    """
    if not is_hub_name(name):
        raise InputError(f"'{name}' is neither a model folder nor a hub name (such as gpt2 or EleutherAI/pythia-70m)")
    if root is not None:
        allowed = allow_list(root)
        if name not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            raise InputError(
                f"this server loads hub models only from its allow-list ({listed}): '{name}' is not on it; "
                f"an administrator adds it to {ALLOW_ENV} or {root / ALLOW_FILE}"
            )
    found = cached(name)
    if found is not None:
        return found
    if offline() or not allow_download:
        why = "downloads are off (HF_HUB_OFFLINE or WORKBENCH_OFFLINE)" if offline() else "downloads are off here"
        raise InputError(
            f"model '{name}' is not in the local Hugging Face cache and {why}: on a machine with internet run "
            f"`hf download {name} --include '*.safetensors' '*.json' 'tokenizer*'`, or unset the switch"
        )
    return _download(name, tqdm_class)


def _download(name: str, tqdm_class: type | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                name, cache_dir=cache_dir(), allow_patterns=ALLOW_PATTERNS, tqdm_class=tqdm_class, endpoint=os.environ.get("HF_ENDPOINT")
            )
        )
    except GatedRepoError as err:
        raise InputError(gated_message(name)) from err
    except RepositoryNotFoundError as err:
        raise InputError(
            f"no model '{name}' on the Hugging Face Hub (or it is private: log in with `hf auth login`, or set HF_TOKEN)"
        ) from err
    except HfHubHTTPError as err:
        raise InputError(f"the Hugging Face Hub refused '{name}': {_first_line(err)}") from err
    except Exception as err:  # no connection, a proxy, a full disk
        raise InputError(
            f"could not download '{name}' from the Hugging Face Hub ({_first_line(err)}); check the connection, "
            "or set HF_HUB_OFFLINE=1 to work from the cache only"
        ) from err
    if not any(folder.glob("*.safetensors")):
        raise InputError(
            f"'{name}' on the hub has no safetensors weights, only pickle checkpoints, which the workbench never loads "
            "(unpickling runs code); convert them once where you trust them, or choose a repository with *.safetensors"
        )
    return folder


def gated_message(name: str) -> str:
    """The one line a gated repository gets."""
    return (
        f"'{name}' is gated on the Hugging Face Hub: accept its licence at https://huggingface.co/{name}, then log in on this "
        "machine (`hf auth login`, or set HF_TOKEN to a token that has access)"
    )


def progress_tqdm(report: Callable[[str, float], None]) -> type:
    """A tqdm class for `fetch` that calls report(description, share done 0..1) as the download goes (the app's progress bar)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Reporting(hf_tqdm):
        # counted here: a tqdm that is disabled (no terminal, as under a server) keeps no count of its own
        def __init__(self, *args, **kwargs):
            self._label, self._total, self._done = str(kwargs.get("desc") or "downloading"), kwargs.get("total"), 0
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            self._done += n or 0
            total = getattr(self, "total", None) or self._total
            if total:
                report(self._label, min(1.0, self._done / total))
            return super().update(n)

    return Reporting


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]
