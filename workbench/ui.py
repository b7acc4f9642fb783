"""The Streamlit glue, and the only module of the library that imports streamlit.

- one loaded model per (name, device), shared by every session and thread (`st.cache_resource`);
  its lock keeps concurrent runs from seeing each other's hooks (see model.py);
- selections shared between pages (model, prompt) live in `st.session_state` under keys that are
  not widget keys, because Streamlit forgets a widget's value when a page without it runs;
- `guard()` turns errors into one message on the page: no traceback, and the inputs stay.
"""

from __future__ import annotations

from contextlib import contextmanager

import streamlit as st

from workbench import export
from workbench.errors import InputError
from workbench.model import DEFAULT_MODEL, SHIPPED, LoadedModel, load_model

MODEL = "wb.model"  # name or path of the chosen model
PROMPT = "wb.prompt"  # the prompt shared by all pages
TRUNCATE = "wb.truncate"
OTHER = "a local folder or cached hub model…"
EXAMPLE_PROMPTS = {
    "english": "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a",
    "circuits": "apple river stone cloud tiger piano candle garden apple river stone cloud tiger piano",
}


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def cached_model(name: str, device: str = "cpu", trust_remote_code: bool = False) -> LoadedModel:
    return load_model(name, device=device, trust_remote_code=trust_remote_code)


@contextmanager
def guard(what: str = "this view"):
    """Shows an error in place of the rest of the block; the page and its inputs stay."""
    try:
        yield
    except InputError as err:
        st.error(str(err), icon="✋")
    except Exception as err:  # a bug: say so plainly, without a traceback
        st.error(f"Could not compute {what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", icon="⚠️")


def example_prompt(model_name: str) -> str:
    return EXAMPLE_PROMPTS.get(model_name, EXAMPLE_PROMPTS["english"])


def model_picker() -> LoadedModel | None:
    """Sidebar model choice; returns the loaded model (the last good one if the new choice fails)."""
    st.session_state.setdefault(MODEL, DEFAULT_MODEL)
    current = st.session_state[MODEL]
    options = [*SHIPPED, OTHER]
    choice = st.sidebar.selectbox(
        "Model",
        options,
        index=options.index(current) if current in SHIPPED else len(SHIPPED),
        format_func=lambda o: SHIPPED.get(o, o),
        key="w.model_choice",
    )
    if choice == OTHER:
        path = st.sidebar.text_input(
            "Folder or hub name",
            value="" if current in SHIPPED else current,
            placeholder="/path/to/hf-model or gpt2",
            key="w.model_path",
            help="A Hugging Face model folder (config.json + *.safetensors), or a hub name already in the local cache.",
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
    try:
        model = cached_model(name, trust_remote_code=trust)
    except InputError as err:
        st.sidebar.error(str(err), icon="✋")
        if name == current:
            return None
        model = cached_model(current)  # keep working on the previous model
    else:
        st.session_state[MODEL] = name
    return model


def prompt_form(model: LoadedModel, label: str = "Prompt") -> tuple[str, bool]:
    """The shared prompt, edited in a form; returns (prompt, truncate)."""
    st.session_state.setdefault(PROMPT, example_prompt(model.info.name))
    st.session_state.setdefault(TRUNCATE, False)
    with st.form("prompt_form"):
        text = st.text_area(label, value=st.session_state[PROMPT], height=100, key="w.prompt")
        truncate = st.checkbox(
            f"If the prompt is longer than the context ({model.info.n_ctx} tokens), keep its end",
            value=st.session_state[TRUNCATE],
            key="w.truncate",
        )
        if st.form_submit_button("Run", type="primary"):
            st.session_state[PROMPT] = text
            st.session_state[TRUNCATE] = truncate
    return st.session_state[PROMPT], st.session_state[TRUNCATE]


SELECTED = "#d62728"  # the selected position's outline, the same on every page


def _chips(labels: list[str], backgrounds: list[str], titles: list[str]) -> str:
    """One token display for the whole app: visible whitespace, the selected position outlined."""
    import html

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


def figure(fig, name: str, data=None, rows: list[dict] | None = None) -> None:
    """A plotly figure with downloads: PNG, SVG, HTML of the figure; JSON (and CSV) of its numbers.

    The files are made only when a button is clicked (deferred `data`), so a page costs nothing
    for exports nobody asks for.
    """
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


LAYER, HEAD, POSITION = "wb.layer", "wb.head", "wb.position"


def head_picker(model: LoadedModel) -> tuple[int, int]:
    """Layer and head, shared between pages; clamped to the model."""
    layer = max(0, min(st.session_state.get(LAYER, 0), model.info.n_layers - 1))
    head = max(0, min(st.session_state.get(HEAD, 0), model.info.n_heads - 1))
    c1, c2, _ = st.columns([1, 1, 4])
    layer = c1.selectbox("Layer", range(model.info.n_layers), index=layer, key="w.layer")
    head = c2.selectbox("Head", range(model.info.n_heads), index=head, key="w.head")
    st.session_state[LAYER], st.session_state[HEAD] = layer, head
    return layer, head


def position_picker(labels: list[str], label: str = "Position", key: str = "w.position") -> int:
    """A token position of the prompt (default: the last), shared between pages."""
    default = st.session_state.get(POSITION, len(labels) - 1)
    default = default if 0 <= default < len(labels) else len(labels) - 1
    position = st.selectbox(label, range(len(labels)), index=default, format_func=lambda i: f"{i}: {labels[i]}", key=key)
    if key == "w.position":
        st.session_state[POSITION] = position
    return position


@st.cache_resource(show_spinner="Scoring heads on repeated random tokens…", max_entries=8)
def _head_types_on_repeats(model_name: str, _model: LoadedModel):
    from workbench.attention import head_types_on_repeats

    return head_types_on_repeats(_model)


def cached_head_types_on_repeats(model: LoadedModel):
    """The standard probe's head types: one computation per model for the whole server."""
    return _head_types_on_repeats(f"{model.info.source}|{model.info.device}", model)


@st.cache_resource(max_entries=8)
def _tuned_lens(model_key: str, _model: LoadedModel):
    from workbench.lens import load_tuned_lens

    return load_tuned_lens(_model)


def cached_tuned_lens(model: LoadedModel):
    """The model's tuned lens (or None), read once per server."""
    return _tuned_lens(f"{model.info.source}|{model.info.device}", model)


PAIR = "wb.pair"  # (clean, corrupted) shared between pages
EXAMPLE_PAIRS = {
    "circuits": (
        "apple river stone cloud tiger piano candle garden apple river stone",
        "apple river stone lemon tiger piano candle garden apple river stone",
    ),
    "english": ("The cat sat on the mat. The cat sat on the", "The cat sat on the bed. The cat sat on the"),
}


def pair_form(model: LoadedModel) -> tuple[str, str]:
    """The clean and corrupted prompts, edited in a form and shared between pages."""
    st.session_state.setdefault(PAIR, EXAMPLE_PAIRS.get(model.info.name, EXAMPLE_PAIRS["english"]))
    clean, corrupted = st.session_state[PAIR]
    with st.form("pair_form"):
        c1, c2 = st.columns(2)
        clean = c1.text_area("Clean prompt", clean, height=90, key="w.clean")
        corrupted = c2.text_area("Corrupted prompt (same number of tokens)", corrupted, height=90, key="w.corrupted")
        if st.form_submit_button("Use these prompts", type="primary"):
            st.session_state[PAIR] = (clean, corrupted)
    return st.session_state[PAIR]


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


def progress_reporter(label: str):
    """A progress bar and a cancel button for long work; returns the callback for progress(done, total).

    Clicking Cancel reruns the page, which stops the running sweep where it is: nothing of the
    page's inputs is lost.
    """
    bar = st.progress(0.0, text=label)
    st.button("Cancel", key=f"cancel-{label}")

    def report(done: int, total: int) -> bool:
        bar.progress(done / total, text=f"{label}: {done} of {total}")
        return True

    return report


def probe_command(probe: str, model: LoadedModel, **options) -> None:
    """Shows the command that reproduces this view as a probe (lists become repeated flags)."""
    import shlex

    parts = ["python", "-m", "probes", probe, "--model", model.info.name]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and v != "":
                parts += [flag, str(v)]
    with st.expander("Reproduce as a probe"):
        st.code(" ".join(shlex.quote(p) for p in parts), language="bash")


def page(title: str, caption: str) -> LoadedModel:
    """The common top of every page: configuration, title, caption, the model picker; stops if no model loads."""
    st.set_page_config(page_title=title if "workbench" in title else f"{title} · workbench", page_icon="🔬", layout="wide")
    st.title(title)
    st.caption(caption)
    restore_from_url()
    model = model_picker()
    if model is None:
        st.stop()
    return model


# ---- shareable views: the page's state in the URL's query parameters ------------------------------

PROMPT_B = "wb.prompt_b"  # the second prompt of the compare page
URL_STATE = {"model": MODEL, "prompt": PROMPT, "prompt_b": PROMPT_B, "layer": LAYER, "head": HEAD, "pos": POSITION}
INT_PARAMS = ("layer", "head", "pos")
# widget settings shared through the URL: parameter -> (widget key, kind): a kind is int, float, str,
# or "module:NAME" naming the allowed values
URL_WIDGETS = {
    "site": ("w.site", "workbench.patching:SITES"),
    "direction": ("w.direction", "workbench.patching:DIRECTIONS"),
    "metric": ("w.metric", "workbench.patching:METRICS"),
    "method": ("w.attr_method", "workbench.attribution:METHODS"),
    "baseline": ("w.attr_baseline", "workbench.attribution:BASELINES"),
    "steps": ("w.attr_steps", (int, 2, 512)),
    "target": ("w.lens_typed", str),
    "k": ("w.home_k", (int, 3, 30)),
    "sampling": ("w.gen_mode", "workbench.ui:SAMPLING_MODES"),
    "temperature": ("w.gen_t", (float, 0.05, 5.0)),
    "new_tokens": ("w.gen_n", (int, 1, 100)),
    "top_k": ("w.gen_topk", (int, 0, 4096)),
    "top_p": ("w.gen_topp", (float, 0.01, 1.0)),
    "seed": ("w.gen_seed", (int, 0, 2**31 - 1)),
}  # numbers carry the bounds of their widget: a link outside them is ignored
SAMPLING_MODES = ("greedy (most likely)", "sample")


def _allowed(spec: str):
    import importlib

    module, name = spec.split(":")
    return list(getattr(importlib.import_module(module), name))


def _parse(value: str, kind):
    """The URL's text as the widget's value, or None when it does not fit (a hand-edited link)."""
    import math

    if isinstance(kind, tuple):
        number_type, lo, hi = kind
        try:
            number = number_type(value)
        except ValueError:
            return None
        return number if math.isfinite(number) and lo <= number <= hi else None
    if kind is str:
        return value
    return value if value in _allowed(kind) else None


def restore_from_url() -> None:
    """Once per session, before any widget is drawn: the URL's query parameters become the selections."""
    if st.session_state.get("wb.url_restored"):
        return
    st.session_state["wb.url_restored"] = True
    params = st.query_params
    for name, key in URL_STATE.items():
        if name in params:
            value = params[name]
            if name in INT_PARAMS:
                if not value.lstrip("-").isdigit():
                    continue  # a hand-edited link with a bad number: keep the default
                value = int(value)
            st.session_state[key] = value
    if "clean" in params and "corrupted" in params:
        st.session_state[PAIR] = (params["clean"], params["corrupted"])
    for name, (key, kind) in URL_WIDGETS.items():
        if name in params and (value := _parse(params[name], kind)) is not None:
            st.session_state[key] = value


def share_to_url(*names: str) -> None:
    """Writes the selections this page uses into the URL, so that reloading or sending the link restores the view."""
    wanted: dict[str, str] = {}
    for name in names:
        if name in URL_STATE and URL_STATE[name] in st.session_state:
            wanted[name] = str(st.session_state[URL_STATE[name]])
        elif name == "pair" and PAIR in st.session_state:
            wanted["clean"], wanted["corrupted"] = st.session_state[PAIR]
        elif name in URL_WIDGETS and URL_WIDGETS[name][0] in st.session_state:
            wanted[name] = str(st.session_state[URL_WIDGETS[name][0]])
    if dict(st.query_params) != wanted:
        st.query_params.from_dict(wanted)


def compare_form(model: LoadedModel) -> tuple[str, str]:
    """Prompt A (the shared prompt) and prompt B, edited side by side in a form."""
    pair = EXAMPLE_PAIRS.get(model.info.name, EXAMPLE_PAIRS["english"])
    if PROMPT_B not in st.session_state:
        # first visit: an example pair, unless the user already typed a prompt elsewhere (it becomes A)
        untouched = st.session_state.get(PROMPT, example_prompt(model.info.name)) == example_prompt(model.info.name)
        st.session_state[PROMPT] = pair[0] if untouched else st.session_state[PROMPT]
        st.session_state[PROMPT_B] = pair[1]
    with st.form("compare_form"):
        c1, c2 = st.columns(2)
        a = c1.text_area("Prompt A", st.session_state[PROMPT], height=90, key="w.prompt_a")
        b = c2.text_area("Prompt B", st.session_state[PROMPT_B], height=90, key="w.prompt_b")
        if st.form_submit_button("Compare", type="primary"):
            st.session_state[PROMPT], st.session_state[PROMPT_B] = a, b
    return st.session_state[PROMPT], st.session_state[PROMPT_B]
