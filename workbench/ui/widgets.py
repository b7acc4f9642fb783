"""What pages draw: the model picker, the prompt and pair forms, the task picker, token chips, figures with their
downloads, the layer/head and position pickers, the probe command, and `guard`, which turns an error into one
message on the page (no traceback, and the inputs stay).
"""

from __future__ import annotations

import html
import json
import shlex
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from workbench import checkpoints, examples, export, hub
from workbench.errors import InputError
from workbench.model import DEFAULT_MODEL, MODELS_DIR, SHIPPED, LoadedModel, allowed_root
from workbench.tokens import unknown_words
from workbench.ui.cache import cached_model
from workbench.ui.state import (
    CHECKPOINT,
    CLEAN,
    CORRUPTED,
    DTYPE,
    HEAD,
    LAYER,
    MODEL,
    OTHER,
    POSITION,
    PRECISIONS,
    PROMPT,
    SELECTED,
    TRUNCATE,
    example_pair,
    example_prompt,
)


@contextmanager
def guard(what: str = "this view"):
    """Shows an error in place of the rest of the block; the page and its inputs stay."""
    try:
        yield
    except InputError as err:
        st.error(str(err), icon="✋")
    except Exception as err:  # a bug: say so plainly, without a traceback
        st.error(f"Could not compute {what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", icon="⚠️")


def open_model(name: str) -> None:
    """Makes `name` (a shipped model or MODEL@STEP) every page's model; for a button's on_click, before the picker draws."""
    base, _, step = name.partition(checkpoints.SEPARATOR)
    st.session_state[MODEL] = name
    st.session_state["w.model_choice"] = base if base in SHIPPED else OTHER
    st.session_state[CHECKPOINT] = int(step) if step.isdigit() else "final"


def model_picker() -> LoadedModel | None:
    """Sidebar model choice; returns the loaded model (the last good one if the new choice fails).

    A shipped model with training checkpoints also gets a checkpoint slider: "final", or a step
    (the model becomes "english@1200", the same name a link or a probe takes)."""
    st.session_state.setdefault(MODEL, DEFAULT_MODEL)
    current = st.session_state[MODEL]
    base, _, current_step = current.partition(checkpoints.SEPARATOR)
    options = [*SHIPPED, OTHER]
    choice = st.sidebar.selectbox(
        "Model",
        options,
        index=options.index(base) if base in SHIPPED else len(SHIPPED),
        format_func=lambda o: SHIPPED.get(o, o),
        key="w.model_choice",
    )
    if choice == OTHER:
        path = st.sidebar.text_input(
            "Folder or hub name",
            value="" if current in SHIPPED else current,
            placeholder="/path/to/hf-model or gpt2",
            key="w.model_path",
            help="A Hugging Face model folder (config.json + *.safetensors), or a hub name: from the local cache, else downloaded "
            "(safetensors only) unless HF_HUB_OFFLINE=1 or WORKBENCH_OFFLINE=1.",
        ).strip()
        name = path or current
        trust = st.sidebar.checkbox(
            "Trust this folder's code (trust_remote_code)",
            value=False,
            key="w.trust_remote_code",
            help="Runs Python files from the model folder on this server. Leave off unless you wrote or checked them.",
        )
        if trust:
            st.sidebar.warning("The model folder's own Python code will run on this server.", icon="⚠️")
    else:
        name, trust = choice, False
        steps = checkpoints.steps(MODELS_DIR / choice)
        if steps:
            start = int(current_step) if base == choice and current_step.isdigit() and int(current_step) in steps else "final"
            if st.session_state.get(CHECKPOINT, start) not in ["final", *steps]:  # another model's step
                st.session_state[CHECKPOINT] = start
            step = st.sidebar.select_slider(
                "Training checkpoint",
                ["final", *steps],
                **({} if CHECKPOINT in st.session_state else {"value": start}),
                key=CHECKPOINT,
                help="The model as it was after this many training steps (the Training page shows what changed).",
            )
            name = choice if step == "final" else f"{choice}{checkpoints.SEPARATOR}{step}"
    # reduced precision halves the weights' memory; the README's "Reduced precision" says which views stay exact
    dtype = st.sidebar.selectbox(
        "Precision",
        PRECISIONS,
        index=PRECISIONS.index(st.session_state.get(DTYPE, "float32")),
        key="w.dtype",
        help="float32: exact. bfloat16 / float16: half the memory, numbers within the README's stated tolerances.",
    )
    try:
        _download_with_progress(name)
        model = cached_model(name, trust_remote_code=trust, dtype=dtype)
    except InputError as err:
        st.sidebar.error(str(err), icon="✋")
        if name == current and dtype == st.session_state.get(DTYPE, "float32"):
            return None
        model = cached_model(current, dtype=st.session_state.get(DTYPE, "float32"))  # keep working on the previous model
    else:
        st.session_state[DTYPE] = dtype
        st.session_state[MODEL] = name
    return model


def _download_with_progress(name: str) -> None:
    """A hub name not yet in the cache is downloaded here, under a progress bar (hub.py), before the model loads."""
    root = allowed_root()
    if name in SHIPPED or Path(name).expanduser().exists() or not hub.is_hub_name(name) or hub.offline():
        return  # loads from disk, or load_model says why it cannot
    if (root is not None and name not in hub.allow_list(root)) or hub.cached(name) is not None:
        return
    from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

    bar = st.sidebar.progress(0.0, text=f"Downloading {name} from the Hugging Face Hub…")
    ctx = get_script_run_ctx()

    def report(label: str, share: float) -> None:
        # huggingface_hub downloads files in worker threads: they join this session to draw the bar
        if get_script_run_ctx(suppress_warning=True) is None:
            add_script_run_ctx(threading.current_thread(), ctx)
        bar.progress(share, text=f"{name}: {label}")

    hub.fetch(name, root, tqdm_class=hub.progress_tqdm(report))
    bar.empty()


def prompt_form(model: LoadedModel, label: str = "Prompt", page: str = "") -> tuple[str, bool]:
    """The shared prompt, edited in a form; returns (prompt, truncate). A page's own example replaces another
    page's example of the same model (never a prompt the user typed or a link carried)."""
    if page and st.session_state.get(PROMPT) in examples.prompts_of(model.info.name):
        st.session_state[PROMPT] = example_prompt(model.info.name, page)
    st.session_state.setdefault(PROMPT, example_prompt(model.info.name, page))
    st.session_state.setdefault(TRUNCATE, False)
    with st.form("prompt_form"):
        prompt = st.text_area(label, value=st.session_state[PROMPT], height=100, key="w.prompt")
        truncate = st.checkbox(
            f"If the prompt is longer than the context ({model.info.n_ctx} tokens), keep its end",
            value=st.session_state[TRUNCATE],
            key="w.truncate",
        )
        if st.form_submit_button("Run", type="primary"):
            st.session_state[PROMPT] = prompt
            st.session_state[TRUNCATE] = truncate
    unknown_words_note(model, st.session_state[PROMPT])
    return st.session_state[PROMPT], st.session_state[TRUNCATE]


def pair_form(model: LoadedModel) -> tuple[str, str]:
    """The clean and corrupted prompts, edited in a form and shared between pages."""
    clean, corrupted = example_pair(model.info.name)
    st.session_state.setdefault(CLEAN, clean)
    st.session_state.setdefault(CORRUPTED, corrupted)
    with st.form("pair_form"):
        c1, c2 = st.columns(2)
        clean = c1.text_area("Clean prompt", st.session_state[CLEAN], height=90, key="w.clean")
        corrupted = c2.text_area("Corrupted prompt (same number of tokens)", st.session_state[CORRUPTED], height=90, key="w.corrupted")
        if st.form_submit_button("Use these prompts", type="primary"):
            st.session_state[CLEAN], st.session_state[CORRUPTED] = clean, corrupted
    unknown_words_note(model, st.session_state[CLEAN], st.session_state[CORRUPTED])
    return st.session_state[CLEAN], st.session_state[CORRUPTED]


def unknown_words_note(model: LoadedModel, *texts: str) -> None:
    """One line where a prompt holds words the model's vocabulary lacks (the stories model knows only its world's
    words): the views still run, on its unknown token in their place."""
    unknown = list(dict.fromkeys(w for t in texts for w in unknown_words(model.tokenizer, t)))
    if unknown:
        shown = ", ".join(f"'{w}'" for w in unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        st.warning(
            f"{model.info.name} does not know {shown}: each reads as {model.tokenizer.unk_token}. "
            "Its vocabulary is its world's words; another model reads any text.",
            icon="🔤",
        )


def set_pair(clean: str, corrupted: str) -> None:
    """Replaces the shared prompt pair (the form shows it on the next run)."""
    st.session_state[CLEAN], st.session_state[CORRUPTED] = clean, corrupted


def use_pair(clean: str, corrupted: str) -> None:
    """Replaces the shared prompt pair from a widget's callback (the form's text areas take it on this run)."""
    set_pair(clean, corrupted)
    for key in ("w.clean", "w.corrupted"):
        st.session_state.pop(key, None)


def use_prompt(prompt: str) -> None:
    """Replaces the shared prompt from a widget's callback (the prompt form takes it on this run)."""
    st.session_state[PROMPT] = prompt
    st.session_state.pop("w.prompt", None)


def task_picker(model: LoadedModel, apply: Callable[[Any], None]) -> None:
    """Opens a pair of a task dataset shipped beside the model (tasks/*.json: the stories model's ioi, pronoun, ...).

    `apply(pair)` (a `tasks.Pair`) puts the pair into the page's inputs. It runs as the button's
    callback, before this run draws the page's widgets, so it may set their keys. Nothing is drawn
    for a model without task datasets."""
    from workbench import tasks

    folder = Path(model.info.source)
    names = tasks.available(folder) if folder.is_dir() else []
    if not names:
        return
    with st.expander("Open a pair of a task dataset"):
        c1, c2, c3 = st.columns([3, 1, 1])
        name = c1.selectbox("Task", names, key="w.task", format_func=lambda n: f"{n}: {tasks.TASKS[n]}")
        task = tasks.load(folder, name)
        index = min(int(c2.number_input("Pair", 0, 10_000, 0, key="w.task_pair")), len(task.pairs) - 1)
        pair = task.pairs[index]
        c3.button("Use this pair", on_click=apply, args=(pair,), key="w.task_use", type="primary")
        st.caption(f"clean: {pair.clean!r} · corrupted: {pair.corrupted!r} · answer {pair.answer!r} · wrong {pair.wrong!r}")


def _chips(labels: list[str], backgrounds: list[str], titles: list[str]) -> str:
    """One token display for the whole app: visible whitespace, the selected position outlined."""
    selected = st.session_state.get(POSITION)
    return "".join(
        f'<span title="{html.escape(title)}" style="display:inline-block;margin:2px;padding:1px 5px;border-radius:4px;'
        f"font-family:monospace;white-space:pre;background:{bg};"
        f'{f"outline:2px solid {SELECTED};" if i == selected else ""}">{html.escape(label)}</span>'
        for i, (label, bg, title) in enumerate(zip(labels, backgrounds, titles, strict=True))
    )


def token_chips(labels: list[str], ids: list[int]) -> None:
    """The prompt as token chips (whitespace visible), position and id on hover."""
    chips = _chips(
        labels, ["#e8eef8" if i % 2 else "#f3e8f8" for i in range(len(labels))], [f"position {i}, id {t}" for i, t in enumerate(ids)]
    )
    st.markdown(f"<div style='line-height:2'>{chips}</div>", unsafe_allow_html=True)


def token_rows(clean: list[str], corrupted: list[str], differ: list[int], names: tuple[str, str] = ("clean", "corrupted")) -> None:
    """Both tokenizations, aligned by position, differing positions marked."""
    n = min(len(clean), len(corrupted))

    def row(labels):
        backgrounds = ["#ffd7a8" if i in differ or i >= n else "#eef1f6" for i in range(len(labels))]
        return _chips(labels, backgrounds, [f"position {i}" for i in range(len(labels))])

    st.markdown(
        f"<div>{names[0]} ({len(clean)} tokens): {row(clean)}</div><div>{names[1]} ({len(corrupted)} tokens): {row(corrupted)}</div>",
        unsafe_allow_html=True,
    )


def figure(fig, name: str, data=None, rows: list[dict] | None = None, select: bool = False) -> None:
    """A plotly figure with downloads: PNG, SVG, HTML of the figure; JSON (and CSV) of its numbers.

    The files are made only when a button is clicked (deferred `data`), so a page costs nothing
    for exports nobody asks for. `select`: a click on a point reruns the page, which reads it
    with `clicked(name)`.
    """
    if select:
        st.plotly_chart(fig, width="stretch", key=f"chart-{name}", on_select="rerun", selection_mode="points")
    else:
        st.plotly_chart(fig, width="stretch", key=f"chart-{name}")
    name = export.safe_name(name)
    no_browser = export.browser() is None
    cols = st.columns(6)
    for col, fmt, mime in zip(cols[:3], ("png", "svg", "html"), ("image/png", "image/svg+xml", "text/html"), strict=True):
        col.download_button(
            fmt.upper(),
            data=lambda fmt=fmt: export.figure_bytes(fig, fmt),
            file_name=f"{name}.{fmt}",
            mime=mime,
            key=f"dl-{fmt}-{name}",
            on_click="ignore",
            disabled=no_browser and fmt != "html",
            help="needs Chromium on the server (apt-get install chromium)" if no_browser and fmt != "html" else None,
        )
    if data is not None:
        cols[3].download_button(
            "JSON",
            data=lambda: export.to_json(data),
            file_name=f"{name}.json",
            mime="application/json",
            key=f"dl-json-{name}",
            on_click="ignore",
        )
    if rows:
        cols[4].download_button(
            "CSV", data=lambda: export.to_csv(rows), file_name=f"{name}.csv", mime="text/csv", key=f"dl-csv-{name}", on_click="ignore"
        )


def clicked(name: str) -> dict | None:
    """The selection of figure `name` (drawn with `figure(..., select=True)`) when it changed since this was last asked,
    else None: a click is acted on once, and a picker set afterwards is not overridden by the old click still shown.

    Read it before the widgets it sets are drawn: the chart's selection is known when the rerun starts."""
    selection = st.session_state.get(f"chart-{name}", {}).get("selection")
    if not selection or not selection.get("points"):
        return None
    seen = f"wb.clicked.{name}"
    signature = json.dumps(selection.get("points"), sort_keys=True, default=str)
    if st.session_state.get(seen) == signature:
        return None
    st.session_state[seen] = signature
    return dict(selection)


def head_picker(model: LoadedModel, default: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Layer and head, shared between pages (`default` until one is chosen); clamped to the model."""
    layer = max(0, min(st.session_state.get(LAYER, default[0]), model.info.n_layers - 1))
    head = max(0, min(st.session_state.get(HEAD, default[1]), model.info.n_heads - 1))
    c1, c2, _ = st.columns([1, 1, 4])
    layer = c1.selectbox("Layer", range(model.info.n_layers), index=layer, key="w.layer")
    head = c2.selectbox("Head", range(model.info.n_heads), index=head, key="w.head")
    st.session_state[LAYER], st.session_state[HEAD] = layer, head
    return layer, head


def position_picker(labels: list[str], label: str = "Position", key: str = "w.position") -> int:
    """A token position of the prompt (default: the last); the one under the default key is shared between pages."""
    default = st.session_state.get(POSITION, len(labels) - 1)
    default = default if 0 <= default < len(labels) else len(labels) - 1
    position = st.selectbox(label, range(len(labels)), index=default, format_func=lambda i: f"{i}: {labels[i]}", key=key)
    if key == "w.position":
        st.session_state[POSITION] = position
    return position


def probe_command(probe: str, model: LoadedModel, **options) -> None:
    """Shows the command that reproduces this view as a probe (lists become repeated flags)."""
    parts = ["workbench-probe", probe, "--model", model.info.name]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and v != "":
                parts += [flag, str(v)]
    with st.expander("Reproduce as a probe"):
        st.code(" ".join(shlex.quote(p) for p in parts), language="bash")
