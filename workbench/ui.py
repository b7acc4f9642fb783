"""The Streamlit glue, and the only module of the library that imports streamlit.

- one loaded model per (name, device), shared by every session and thread (`st.cache_resource`);
  its lock keeps concurrent runs from seeing each other's hooks (see model.py);
- selections shared between pages (model, prompt) live in `st.session_state` under keys that are
  not widget keys, because Streamlit forgets a widget's value when a page without it runs;
- `guard()` turns errors into one message on the page: no traceback, and the inputs stay.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import streamlit as st

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
def cached_model(name: str, device: str = "cpu") -> LoadedModel:
    return load_model(name, device=device)


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
    else:
        name = choice
    try:
        model = cached_model(name)
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


def token_chips(labels: list[str], ids: list[int]) -> None:
    """The prompt as token chips (whitespace visible), position and id on hover."""
    import html

    chips = "".join(
        f'<span title="position {i}, id {t}" style="display:inline-block;margin:2px;padding:1px 5px;border-radius:4px;'
        f'background:{"#e8eef8" if i % 2 else "#f3e8f8"};font-family:monospace;white-space:pre">{html.escape(label)}</span>'
        for i, (label, t) in enumerate(zip(labels, ids, strict=True))
    )
    st.markdown(f"<div style='line-height:2'>{chips}</div>", unsafe_allow_html=True)


def figure(fig, data: dict | None = None, name: str = "figure") -> None:
    """A plotly figure with downloads of the figure (HTML) and its numbers (JSON)."""
    st.plotly_chart(fig, width="stretch")
    cols = st.columns(4)
    cols[0].download_button("HTML", fig.to_html(include_plotlyjs="cdn"), file_name=f"{name}.html", mime="text/html", key=f"dl-html-{name}")
    if data is not None:
        cols[1].download_button(
            "JSON", json.dumps(data, indent=1), file_name=f"{name}.json", mime="application/json", key=f"dl-json-{name}"
        )
