"""What a computation will cost before it runs, and the per-model results worth keeping on disk.

The cost model is the arithmetic of a transformer: a forward pass costs 2 floating-point operations
per weight of every matrix multiplication per token (the unembedding included, the embedding
lookup not), plus the attention's own q·k and weights·v products, which grow with the prompt
(counted once per model with torch's FlopCounterMode, `flops_per_token`); a backward pass costs
about twice its forward. So a computation is described by the tokens it sends through the model
forward and backward (`Estimate`), and its seconds are those FLOPs at the rate this model reaches
on its device, measured once per loaded model by timing two forward passes of 8 and 64 tokens
(`calibrate`): a fixed cost per call (hooks, Python, kernel launches: ~1 ms per layer on a CPU)
and a cost per FLOP. That is what a gate needs: the question is "about a second, or about a
minute?" (the scoreboard on the circuits model: estimated 41 s, took 32 s on a busy machine).

Gates: a page runs a computation on its own only when its estimate is within `BUDGET_S` (2 s);
above it, the page shows a button with the estimate, and the work runs with a progress bar and a
Cancel button (ui.gate, ui.progress). Probes print the estimate before they start.

Disk cache (`disk_cached`): results that depend on the weights only, not on a prompt (head scores
on repeated random tokens), are computed once per model and kept next to a
local model folder (`<folder>/.workbench-cache/`), or under ~/.cache/workbench (WORKBENCH_CACHE) for a
shipped or hub model or a folder this process may not write. Files are safetensors with a JSON header -- never pickle, which
would run code when read -- and their names carry a fingerprint of the weight files (size and
modification time), the dtype and a version, so a changed model never reads a stale result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.errors import InputError
from workbench.model import MODELS_DIR, LoadedModel

BUDGET_S = 2.0  # seconds of work a page may start without being asked
CALIBRATION_TOKENS = (8, 64)
BACKWARD_FACTOR = 2.0  # a backward pass costs about twice its forward (two matrix products per weight)
DISK_VERSION = 1


# ---- the cost of a forward pass -----------------------------------------------------------------


def flops_per_token(model: LoadedModel) -> tuple[float, float]:
    """(a, b): a forward pass costs a + b × tokens FLOPs per token, counted once per model by torch's FlopCounterMode.

    `a` is every weight's matrix multiplication (2 FLOPs per weight, the unembedding included), `b`
    the attention's q·k and weights·v, which grow with the prompt. Counted, not derived from the
    config: what the bridge really runs (compatibility mode splits GPT-2's fused QKV, for one).
    """
    found = model.state.flops_per_token
    if found is None:
        from torch.utils.flop_counter import FlopCounterMode

        ids = torch.zeros(1, 16, dtype=torch.long, device=model.device)  # (1, pos): any token, the count is the same

        def counted(n: int) -> float:
            with model.lock, torch.no_grad(), FlopCounterMode(display=False) as mode:
                _forward(model, ids[:, :n])
            counted_flops = mode.get_total_flops()
            # a remote backend (ndif://) runs elsewhere and nothing is counted here: 2 FLOPs per weight
            return counted_flops / n if counted_flops else 2.0 * model.info.n_params

        per_8, per_16 = counted(8), counted(16)
        b = (per_16 - per_8) / 8
        found = (per_8 - 8 * b, b)
        model.state.flops_per_token = found
    return found


def _forward(model: LoadedModel, ids: torch.Tensor) -> None:
    """One forward pass of ids (1, pos) through whichever backend runs the model (the bridge, or nnsight)."""
    if model.backend is None:
        model.bridge(ids)
    else:
        from workbench import runs  # runs imports the engine, which the cost model does not otherwise need

        runs.run_tokens(model, ids)


def forward_flops(model: LoadedModel, tokens: int, batch: int = 1) -> float:
    """FLOPs of one forward pass of `batch` sequences of `tokens` tokens (see flops_per_token)."""
    a, b = flops_per_token(model)
    return float(batch * tokens * (a + b * tokens))


@dataclass(frozen=True)
class Calibration:
    """How fast this model runs on its device: seconds = calls × per_call + FLOPs × per_flop."""

    per_call: float  # seconds of fixed cost per model call
    per_flop: float  # seconds per floating-point operation
    forward_s: float  # the measured forward pass of CALIBRATION_TOKENS[-1] tokens

    def seconds(self, flops: float, calls: int = 1) -> float:
        return calls * self.per_call + flops * self.per_flop


def calibrate(model: LoadedModel) -> Calibration:
    """Times two forward passes (8 and 64 tokens) once per loaded model; later calls return the same numbers."""
    found = model.state.calibration
    if found is not None:
        return found
    short, long_ = CALIBRATION_TOKENS
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.info.d_vocab, len(model.tokenizer))
    ids = torch.randint(0, vocab, (1, long_), generator=gen).to(model.device)  # (1, pos)

    def timed(n: int) -> float:
        with model.lock, torch.no_grad():
            start = time.perf_counter()
            _forward(model, ids[:, :n])
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    timed(short)  # the first call pays for allocation and kernel selection
    t_short, t_long = timed(short), timed(long_)
    f_short, f_long = forward_flops(model, short), forward_flops(model, long_)
    per_flop = (t_long - t_short) / (f_long - f_short)
    if per_flop <= 0:  # noise on a busy machine: all of it per FLOP
        per_flop, per_call = t_long / f_long, 0.0
    else:
        per_call = max(0.0, t_short - per_flop * f_short)
    found = Calibration(per_call, per_flop, t_long)
    model.state.calibration = found
    return found


# The reference machine of issue 23: 2 idle CPU cores, where a plain forward of a GPT-2-small shape costs ~1 ms per
# layer per call plus 3.4 GFLOP for 14 tokens in 0.11 s. Tests and the page benchmark decide their gates at this
# speed, so that what they count does not depend on how busy the machine is.
REFERENCE_PER_LAYER_CALL = 1e-3
REFERENCE_PER_FLOP = 2.9e-11


def reference_calibration(model: LoadedModel) -> Calibration:
    """The calibration this model would get on the reference machine (no timing): for tests and benchmarks."""
    per_call = REFERENCE_PER_LAYER_CALL * model.info.n_layers
    return Calibration(per_call, REFERENCE_PER_FLOP, per_call + REFERENCE_PER_FLOP * forward_flops(model, CALIBRATION_TOKENS[-1]))


@dataclass(frozen=True)
class Estimate:
    """The cost of one computation, before it runs: what passes through the model, and the seconds that makes here."""

    what: str
    forward_tokens: int  # tokens sent forward through the whole model (all batch rows, all calls)
    backward_tokens: int = 0  # tokens whose gradient flows back through the whole model
    calls: int = 1  # separate model calls (each pays the fixed cost)
    seconds: float = 0.0

    @property
    def over_budget(self) -> bool:
        return self.seconds > BUDGET_S

    def label(self) -> str:
        """'~3 s' / '~2 min': for a button."""
        return f"~{duration(self.seconds)}"

    def line(self) -> str:
        """One line for a probe or a caption."""
        passes = f"{self.forward_tokens:,} tokens forward" + (f", {self.backward_tokens:,} backward" if self.backward_tokens else "")
        return f"{self.what}: {passes} in {self.calls:,} call(s), estimated {duration(self.seconds)} on this model and device"


def duration(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(model: LoadedModel, what: str, tokens: int, passes: int = 1, backward: int = 0, calls: int | None = None) -> Estimate:
    """The cost of `passes` forward passes (and `backward` backward passes) of sequences of `tokens` tokens.

    `calls`: how many separate model calls they take (default: one per pass; batched work takes fewer).
    """
    cal = calibrate(model)
    one = forward_flops(model, tokens)
    flops = one * (passes + BACKWARD_FACTOR * backward)
    calls = passes + backward if calls is None else calls
    return Estimate(what, tokens * passes, tokens * backward, calls, cal.seconds(flops, calls))


def report(progress: Callable[[int, int], bool | None] | None, done: int, total: int, what: str) -> None:
    """Tells `progress(done, total)` (when given) how far `what` is; its False (the page's Cancel) stops the work here.

    Long work calls this between its chunks: the callback is where a page returns to Streamlit,
    so that a click on Cancel can reach the work at all (NOTES: work that never calls Streamlit
    cannot be stopped). Cancelled: InputError, one line.
    """
    if progress is not None and progress(done, total) is False:
        raise InputError(f"{what} was cancelled after {done} of {total} steps")


# ---- per-model results on disk ---------------------------------------------------------------------


def _fingerprint(model: LoadedModel) -> str:
    folder = Path(model.info.source)
    parts = [model.info.dtype, model.info.numeric_mode, str(DISK_VERSION)]
    for f in sorted(folder.glob("*.safetensors")):
        s = f.stat()
        parts.append(f"{f.name}:{s.st_size}:{int(s.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cache_dir(model: LoadedModel) -> Path:
    """Where this model's per-model results live: next to a local folder if writable, else ~/.cache/workbench.

    The shipped models (and their checkpoints) are part of the installed package: their results go
    to the cache folder too (WORKBENCH_CACHE, ~/.cache/workbench by default).
    """
    folder = Path(model.info.source)
    # a shipped model loaded by its path (as the pages benchmark does) is still the package's folder
    shipped = folder.resolve().is_relative_to(MODELS_DIR.resolve())
    if model.info.kind == "local folder" and not shipped and os.access(folder, os.W_OK):
        return folder / ".workbench-cache"
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")) / key


def clear_disk_cache(model: LoadedModel) -> None:
    """Removes this model's per-model results from disk (they are computed again when next needed)."""
    folder = cache_dir(model)
    if folder.is_dir():
        for f in folder.glob("*.safetensors"):
            f.unlink()


def disk_cached(
    model: LoadedModel,
    name: str,
    compute: Callable[[], object] | None,
    to_disk: Callable[[object], tuple[dict[str, torch.Tensor], dict]],
    from_disk: Callable[[dict[str, torch.Tensor], dict], object],
) -> object:
    """compute(), or the copy kept on disk for this model's weights; `to_disk` splits a result into tensors and JSON.

    `compute=None`: only look (None when nothing is on disk). A cache that cannot be written
    (read-only disk) is no error: the result is returned all the same.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = cache_dir(model) / f"{name}-{_fingerprint(model)}.safetensors"
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
                meta = json.loads(f.metadata()["json"])
            return from_disk(tensors, meta)
        except Exception:  # a damaged or older file: compute again and overwrite it
            pass
    if compute is None:
        return None
    result = compute()
    tensors, meta = to_disk(result)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"json": json.dumps(meta)})
        tmp.replace(path)  # atomic: another process never reads half a file
    except OSError:
        pass
    return result
