"""Loading a GPT for inspection: the one place that decides where weights come from and how they run.

`load_model()` returns a `LoadedModel`: a transformer-lens 4 `TransformerBridge` (hooks on every
attention head, MLP and residual stream) with its tokenizer, a summary, and a lock.

Sources, tried in this order:
- nothing (the stories model), or a shipped model's short name ("stories", "english", "circuits", "answer-key"): the folders under models/;
- a shipped model's training checkpoint, "english@1200" (checkpoints.py);
- a path to a local Hugging Face model folder;
- a hub name ("gpt2", "org/name"): from the local Hugging Face cache, else downloaded (safetensors
  only, with progress) unless HF_HUB_OFFLINE=1 or WORKBENCH_OFFLINE=1; on a shared server only the
  names on its allow-list (hub.py).

Safety: weights load only from safetensors (`use_safetensors=True`); a folder holding only pickle
checkpoints (.bin, .pt, .ckpt) is refused, because unpickling runs arbitrary code.
`trust_remote_code` is off unless the caller turns it on.

Numeric mode, decided once here and recorded on the model (`info.numeric_mode`): the bridge runs in
transformer-lens's compatibility mode -- layer norms folded into the following weights, writing
weights centred, value biases folded -- because the logit lens and direct logit attribution are
defined in that coordinate system (transformer-lens's own DLA refuses a bridge without it). The
unembedding is *not* centred, so the logits stay equal to the plain transformers model's (centring
it would shift every position's logits by a constant). Residual-stream activations therefore
differ from Hugging Face's hidden states by their mean over d_model, which every layer norm removes.

Concurrency: one loaded model serves every session of a server, and transformer-lens hooks are
module hooks shared by all threads, so every call that runs the model holds `model.lock`.
Measured here: without it, 7 of 12 plain forward passes picked up another thread's ablation hook.

Above 500 lines: every decision about where weights come from and how they run stays in this one place.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench import checkpoints, hub
from workbench.errors import InputError

if TYPE_CHECKING:  # the state's types only: these modules import this one
    from workbench.cost import Calibration
    from workbench.dashboards import DashboardStats
    from workbench.engine import Readout, Unsupported, Weights
    from workbench.sae import SAE
    from workbench.transcoder import Transcoder

ROOT = Path(__file__).resolve().parents[1]
_INSTALLED_MODELS = Path(__file__).resolve().parent / "models"  # where `pip install .` puts models/ (pyproject.toml)
MODELS_DIR = _INSTALLED_MODELS if _INSTALLED_MODELS.is_dir() else ROOT / "models"  # else: a checkout's models/
SHIPPED = {
    "stories": "Stories GPT (3 layers, trained on stories of a small world whose tasks are IOI, pronouns, years, facts and induction; see Tasks) -- the default",
    "english": "English GPT (trained on public-domain English, with induction heads)",
    "circuits": "Circuits GPT (2 layers, trained on a copying task: learned induction heads)",
    "answer-key": "Answer key (2 layers, weights written by hand: a known induction circuit)",
}
# the model organism: its world's regularities are known, so every view has something true to find (models/stories/README.md)
DEFAULT_MODEL = "stories"
COMPATIBILITY_MODE = "compatibility mode (layer norms folded, writing weights centred, value biases folded; unembedding not centred)"
RAW_MODE = "raw Hugging Face weights"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass(frozen=True)
class ModelInfo:
    """The model summary shown on the home page and recorded with every result."""

    name: str  # short name or path as the user gave it
    source: str  # the folder the weights were read from
    kind: str  # "shipped", "checkpoint", "local folder" or "hub cache"
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int  # key/value heads: fewer than n_heads under grouped-query attention
    d_model: int
    d_head: int
    d_mlp: int
    n_ctx: int  # context length in tokens
    d_vocab: int
    n_params: int
    numeric_mode: str
    device: str
    dtype: str
    trust_remote_code: bool
    note: str = ""  # how the model was placed when accelerate spread it (device_map, max_memory)

    @property
    def compatibility_mode(self) -> bool:
        return self.numeric_mode == COMPATIBILITY_MODE

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for display."""
        return [
            ("source", f"{self.kind}: {self.source}"),
            ("architecture", self.architecture),
            ("layers", str(self.n_layers)),
            ("heads per layer", str(self.n_heads) + (f" ({self.n_kv_heads} key/value heads)" if self.n_kv_heads != self.n_heads else "")),
            ("d_model", str(self.d_model)),
            ("d_head", str(self.d_head)),
            ("d_mlp", str(self.d_mlp)),
            ("context length", f"{self.n_ctx} tokens"),
            ("vocabulary", f"{self.d_vocab:,} tokens"),
            ("parameters", f"{self.n_params:,}"),
            ("numeric mode", self.numeric_mode),
            ("device / dtype", f"{self.device} / {self.dtype}"),
            *([("placement", self.note)] if self.note else []),
        ]


@dataclass(eq=False)
class ModelState:
    """What is computed from a loaded model's weights once and reused by every page and session.

    One typed field per thing, each filled lazily by the one function named beside it, under that
    function's own checks; nothing else writes it. Every entry is a function of the weights (and of
    the files beside them), so it is valid as long as the model is: the weights are never edited in
    place (edits are data applied inside one call). A field that is None has not been computed yet.
    Tests that swap in other weights (engine.Weights put in by hand) reset `weights` and `checked`.
    """

    # engine.weights_of: the forward engine's Weights, or the engine.Unsupported that says why it cannot run the model
    weights: Weights | Unsupported | None = None
    # engine.backend: (the Weights it checked, the relative gap of their logits from the model's, or Unsupported)
    checked: tuple[Weights, float | Unsupported] | None = None
    # engine.readout_of: the final norm and unembedding (lens readout, contrast directions, promoted tokens)
    readout: Readout | None = None
    # conventions.raw_twin: the same model loaded on raw Hugging Face weights (numbers in Hugging Face's coordinates)
    raw_twin: LoadedModel | None = None
    # conventions.head_constants: (layer, head, d_head) Hugging Face's z minus the workbench's z
    head_constants: torch.Tensor | None = None
    # cost.flops_per_token: (a, b) of a forward pass's a + b × tokens FLOPs per token; cost.calibrate: seconds per call and FLOP
    flops_per_token: tuple[float, float] | None = None
    calibration: Calibration | None = None
    # sae.saes_of: hook name -> the SAEs shipped in models/<name>/sae/
    saes: dict[str, SAE] | None = None
    # sae.user_sae (sae.sae_set, edit_values.load_sae): resolved folder -> a user's SAE, checked to fit
    user_saes: dict[str, SAE] = field(default_factory=dict)
    # dashboards.stats_for: (hook name, id of the SAE) -> its dashboard stats on the held-out text
    dashboards: dict[tuple[str, int], DashboardStats] = field(default_factory=dict)
    # transcoder.transcoders_of: layer -> the transcoders shipped with the model
    transcoders: dict[int, Transcoder] | None = None
    # attribution_graph.transcoder_set: a user's folder -> its transcoders, checked to fit
    user_transcoders: dict[str, dict[int, Transcoder]] = field(default_factory=dict)
    # transcoder_contexts.top_contexts: (layer, folder) -> (held-out name, rows, top values, their places, each feature's density)
    transcoder_contexts: dict[tuple[int, str], tuple] = field(default_factory=dict)
    # edit_values.reference_mean: (reference prompts, hook, key) -> the mean activation a mean ablation writes
    reference_means: dict[tuple, torch.Tensor] = field(default_factory=dict)
    # edit_values.difference_vector: (plus prompts, minus prompts, hook) -> (d_model,) their mean difference
    differences: dict[tuple, torch.Tensor] = field(default_factory=dict)


@dataclass(eq=False)
class LoadedModel:
    """A bridge with its tokenizer and summary. Run it only while holding `lock` (see module doc)."""

    bridge: object  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    info: ModelInfo
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # runs of this model, shared by every page and session (see runs.py)
    run_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    # what is computed from the weights once and reused (ModelState: engine weights, readout, SAEs, reference means)
    state: ModelState = field(default_factory=ModelState, repr=False)
    # None: the bridge runs the model; else the nnsight backend (nnsight_backend.py) does, here or on an NDIF server
    backend: object | None = field(default=None, repr=False)

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def device(self) -> torch.device:
        return torch.device(self.info.device)

    def attached_hooks(self) -> list[str]:
        """Names of hook points that have a hook on them right now (normally none)."""
        found = []
        if self.backend is not None:  # nnsight's edits live inside one trace: nothing stays on the model
            return found
        for name, point in self.bridge.hook_dict.items():
            if point._forward_hooks or point._backward_hooks or getattr(point, "fwd_hooks", None) or getattr(point, "bwd_hooks", None):
                found.append(name)
        return found


def allowed_root() -> Path | None:
    """The folder that model paths must lie under on a shared server (WORKBENCH_MODEL_ROOT), or None."""
    root = os.environ.get("WORKBENCH_MODEL_ROOT", "").strip()
    return Path(root).expanduser().resolve() if root else None


def resolve(name_or_path: str | os.PathLike | None, root: Path | None = None) -> tuple[str, Path, str]:
    """(display name, folder, kind) for a short name, a folder path or a cached hub name.

    With `root` (a shared server's WORKBENCH_MODEL_ROOT), only the shipped models and folders
    under it load: paths are resolved (links and '..' included) before the check.
    """
    if name_or_path is None or str(name_or_path).strip() == "":
        name_or_path = DEFAULT_MODEL
    name = str(name_or_path).strip()
    if "\x00" in name:
        raise InputError("the model name holds a NUL character: give a folder path or a model name")
    base, at, _ = name.rpartition(checkpoints.SEPARATOR)
    if at and base.strip() in SHIPPED:  # a training checkpoint of a shipped model, "english@1200"
        base, step = checkpoints.split_name(name)
        return name, checkpoints.folder_for(base, MODELS_DIR / base, step), "checkpoint"
    if name in SHIPPED:
        folder = MODELS_DIR / name
        if not (folder / "config.json").exists():
            raise InputError(f"the shipped model '{name}' is missing from {folder}; retrain it with `python -m workbench.train {name}`")
        return name, folder, "shipped"
    path = Path(name).expanduser()
    if root is not None and name in hub.allow_list(root):  # a shared server's allowed hub names (hub.py)
        return name, hub.fetch(name, root), "hub cache"
    if root is not None:
        target = (root / path).resolve() if not path.is_absolute() else path.resolve()
        if not target.is_relative_to(root):
            raise InputError(f"this server loads models only from {root} (and the shipped models): '{name}' is outside it")
        path = target
        if not path.exists():
            raise InputError(
                f"no model folder '{name}' under {root}: this server loads only folders there, the shipped models "
                f"and the hub names on its allow-list ({hub.ALLOW_ENV} or {hub.ALLOW_FILE})"
            )
    if path.exists():
        if not path.is_dir():
            raise InputError(
                f"'{name}' is a file, not a model folder: give the folder that holds config.json and the *.safetensors weights"
            )
        return name, path.resolve(), "local folder"
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise InputError(f"no model folder at '{name}': check the path (a Hugging Face model folder with config.json and *.safetensors)")
    return name, hub.fetch(name), "hub cache"  # the cache, else a download when allowed (hub.py)


def check_folder(folder: Path) -> None:
    """Refuses folders that cannot be loaded safely, saying why and what to do."""
    if not (folder / "config.json").exists():
        raise InputError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    for weights in folder.glob("*.safetensors"):
        try:
            with open(weights, "rb") as f:
                f.read(8)
        except OSError as err:
            raise InputError(
                f"could not load the model in {folder}: cannot read {weights.name} ({err.strerror or type(err).__name__})"
            ) from err
    files = [p for p in folder.iterdir() if p.is_file()]
    if not any(p.suffix == ".safetensors" for p in files):
        pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise InputError(
                f"{folder} holds only pickle checkpoints ({', '.join(sorted(pickles))}); they are refused because "
                "unpickling can run arbitrary code. Convert them once, where you trust the file: "
                "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`"
            )
        raise InputError(f"{folder} has no weights (*.safetensors): save the model with save_pretrained(..., safe_serialization=True)")


def pick_device(device: str | None) -> str:
    """The device to load on; None: WORKBENCH_DEVICE (the server's or a test run's choice, `make gpu-check`), else the CPU."""
    if device in (None, ""):
        device = os.environ.get("WORKBENCH_DEVICE", "").strip() or "cpu"
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{device}' was asked for but no CUDA GPU is available here; use device='cpu'")
    if not str(device).startswith(("cuda", "cpu", "mps")):
        raise InputError(f"unknown device '{device}': use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    return str(device)


def check_dtype(dtype: str, device: str) -> None:
    """Refuses a dtype that the device cannot compute in, saying which to use instead."""
    if str(device).startswith("cuda") and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        major, minor = torch.cuda.get_device_capability(device)
        raise InputError(f"this GPU ({device}, compute capability {major}.{minor}) has no bfloat16: use dtype='float16' or 'float32'")
    if str(device).startswith("mps") and dtype in ("bfloat16", "float64"):
        raise InputError(f"Apple's MPS device has no {dtype}: use dtype='float16' or 'float32'")
    # what a forward pass needs, tried on two numbers: a build of torch (or a CPU) may lack a reduced-precision kernel,
    # which would otherwise fail deep inside the first view with a traceback
    try:
        x = torch.ones(2, 2, dtype=DTYPES[dtype], device=device)
        torch.nn.functional.layer_norm(torch.matmul(x, x), (2,)).softmax(-1).sum().item()
    except (RuntimeError, NotImplementedError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{device} cannot compute in {dtype} with this build of torch ({first}): use dtype='float32'") from err


# Peak bytes per parameter while loading, measured on a GPT-2-small shape (README, "Real size"): the raw weights
# once; compatibility mode's weight processing works on float32 copies (peak 2.15 GB above the start for 0.54 GB
# of float32 weights, and as much from bfloat16 ones): 4 float32 copies.
COMPATIBILITY_PEAK_BYTES = 16


def weight_count(folder: Path) -> int | None:
    """Parameters stored in the folder's *.safetensors files, read from their headers (no tensor is loaded).

    None when a header cannot be read: the loader then says what is wrong with the file.
    """
    total = 0
    for f in folder.glob("*.safetensors"):
        try:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= min(100 * 2**20, f.stat().st_size - 8):  # safetensors caps its header at 100 MB
                    return None
                header = json.loads(fh.read(size))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    return total


def check_memory(folder: Path, dtype: str, device: str, compatibility_mode: bool) -> None:
    """Refuses a model whose loading would not fit in the device's free memory, before anything is loaded."""
    n = weight_count(folder)
    if n is None:
        return
    need = n * (COMPATIBILITY_PEAK_BYTES if compatibility_mode else DTYPES[dtype].itemsize)
    if str(device).startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    if need > free:
        gb = 2**30
        raise InputError(
            f"the model in {folder} ({n / 1e9:.2f} B parameters) needs about {need / gb:.1f} GB to load in {dtype}"
            f"{' in compatibility mode' if compatibility_mode else ''}, and {device} has {free / gb:.1f} GB free: "
            "load it with compatibility_mode=False or dtype='bfloat16', or spread it with max_memory "
            "(e.g. max_memory={'cpu': '8GiB'} offloads the rest to disk)"
        )


def _release_after_processing(bridge, model_type: str) -> None:
    """Gives back what compatibility mode's weight processing leaves behind (measured: benchmarks/bench_load_memory.py).

    - GPT-2's fused QKV weight (`c_attn`, a third of each block's attention weights): the processing
      splits it into separate Q, K and V linears, which the bridge's forward uses from then on; the
      fused one is never read again (tested: NaN in it changes no logit, hook or W_Q/K/V), yet it
      stays, 81 MB on a GPT-2-small shape. It becomes an empty tensor, so that any later read fails
      loudly instead of using stale weights. (BLOOM's bridge rebuilds and runs its fused QKV: kept.)
    - The processing's float32 copies, freed by then, stay in the C heap unless handed back
      (glibc's malloc_trim): ~0.36 GB of resident memory on a GPT-2-small shape.
    """
    if model_type == "gpt2":
        for block in bridge.blocks:
            attn = block.attn
            if all(hasattr(attn, n) for n in ("qkv", "q", "k", "v")):
                fused = attn.qkv.original_component
                fused.weight = torch.nn.Parameter(fused.weight.new_empty(0), requires_grad=False)
                if getattr(fused, "bias", None) is not None:
                    fused.bias = torch.nn.Parameter(fused.bias.new_empty(0), requires_grad=False)
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): the memory is reused by this process all the same
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str = "float32",
    compatibility_mode: bool = True,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> LoadedModel:
    """Loads a model for inspection (see the module docstring for sources, safety and numeric mode).

    `device`: "cpu" (default), "cuda", "cuda:N" or "auto" (CUDA when available). `dtype`:
    "float32" (default), "bfloat16" or "float16" halve the weights' memory (see "Reduced precision"
    in the README for which views stay exact). `device_map` ("auto" or a dict) and `max_memory`
    ({"cuda:0": "20GiB", "cpu": "30GiB"}) spread a model larger than one device over several GPUs,
    CPU RAM and disk (`offload_folder`, a temporary folder by default), through accelerate: every
    view gives the same numbers, only slower. transformer-lens refuses compatibility mode on an
    offloaded model, so such a model keeps its raw weights (`info.note` says so).
    `compatibility_mode=False` keeps the raw Hugging Face weights; analyses that need the
    folded coordinate system (direct logit attribution) then refuse the model and say so.
    """
    from workbench import nnsight_backend

    if nnsight_backend.is_nnsight_name(name_or_path):  # "nnsight:<model>" or "ndif://host:port/<model>"
        return nnsight_backend.load(str(name_or_path), device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name, folder, kind = resolve(name_or_path, allowed_root())
    check_folder(folder)
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    device = pick_device(device)
    check_dtype(dtype, device)
    if max_memory is not None and device_map is None:
        device_map = "auto"  # accelerate places the layers within max_memory, the rest in CPU RAM and on disk
    if device_map is not None and offload_folder is None:
        offload_folder = tempfile.mkdtemp(prefix="workbench-offload-")  # what does not fit in max_memory goes here
    elif device_map is None:
        check_memory(folder, dtype, device, compatibility_mode)
    try:
        # local_files_only: the folder is on this machine and nothing is downloaded (the workbench works offline)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
        hf_model, loading = AutoModelForCausalLM.from_pretrained(
            folder,
            config=config,
            use_safetensors=True,  # never unpickle
            trust_remote_code=trust_remote_code,
            dtype=DTYPES[dtype],
            attn_implementation="eager",  # attention weights are what the workbench shows
            device_map=device_map,
            **({"max_memory": max_memory, "offload_folder": str(offload_folder)} if device_map is not None else {}),
            local_files_only=True,
            output_loading_info=True,
        )
    except InputError:
        raise
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise InputError(
                f"{folder} needs its own Python code to load (trust_remote_code). It is off because that code runs "
                "on this machine; turn it on only for a folder you trust"
            ) from err
        raise InputError(f"could not load the model in {folder}: {first_line(err)}") from err
    except Exception as err:  # corrupt safetensors, unreadable files, unsupported architecture
        raise InputError(f"could not load the model in {folder}: {first_line(err)}") from err
    # transformers fills missing tensors with random values and only logs it: a view of such a model
    # would look right and mean nothing
    missing = sorted(loading.get("missing_keys", ()))
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise InputError(
            f"the weights in {folder} are incomplete: {len(missing)} tensor(s) are missing ({shown}); "
            "save the whole model again with save_pretrained"
        )
    hf_model.eval()
    n_params = sum(p.numel() for p in hf_model.parameters())
    try:
        bridge = TransformerBridge.boot_transformers(
            str(folder),
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=None if device_map else device,
            dtype=DTYPES[dtype],
            trust_remote_code=trust_remote_code,
        )
    except Exception as err:
        raise InputError(f"transformer-lens cannot wrap the model in {folder} ({config.model_type}): {first_line(err)}") from err
    note = ""
    placed = getattr(hf_model, "hf_device_map", None) or {}
    if device_map is not None:
        counts = {d: list(placed.values()).count(d) for d in dict.fromkeys(str(v) for v in placed.values())}
        note = "spread by accelerate: " + ", ".join(f"{n} module(s) on {d}" for d, n in counts.items())
        device = str(hf_model.get_input_embeddings().weight.device).replace("meta", "cpu")  # where inputs go
    if compatibility_mode:
        try:
            bridge.enable_compatibility_mode(disable_warnings=True, center_unembed=False)
            _release_after_processing(bridge, config.model_type)
        except RuntimeError as err:
            if "offload" not in str(err):
                raise InputError(f"transformer-lens cannot process the weights of {folder}: {first_line(err)}") from err
            # transformer-lens cannot fold weights that live on disk or in CPU RAM behind accelerate's hooks
            compatibility_mode = False
            note += "; raw weights (transformer-lens refuses compatibility mode on an offloaded model)"
    # Per-head outputs are not switched on (set_use_attn_result): OPT's and GPT-J's attention bridges
    # have no such hook, and the views that need them compute them from hook_z and W_O (runs.head_results).
    bridge.eval()
    cfg = bridge.cfg
    info = ModelInfo(
        name=name,
        source=str(folder),
        kind=kind,
        architecture=(config.architectures or [config.model_type])[0],
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab,
        n_params=n_params,
        numeric_mode=COMPATIBILITY_MODE if compatibility_mode else RAW_MODE,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        note=note,
    )
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, info=info)


def offloaded(model: LoadedModel) -> bool:
    """Whether accelerate keeps some of the weights on disk or elsewhere (device_map/max_memory): they read as meta tensors."""
    return any(p.is_meta for p in model.bridge.original_model.parameters())


@contextmanager
def onloaded(*modules: torch.nn.Module):
    """Within it, the offloaded weights of `modules` (and their submodules) are real tensors in CPU memory.

    For small parts that a view reads as numbers (the final norm, the unembedding); the blocks run
    through accelerate's own hooks, which load each block's weights only while it runs.
    """
    from accelerate.utils import align_module_device, has_offloaded_params

    with ExitStack() as stack:
        for module in modules:
            for sub in module.modules():
                if has_offloaded_params(sub):
                    stack.enter_context(align_module_device(sub, torch.device("cpu")))
        yield


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
