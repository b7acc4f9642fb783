"""Tasks: the known mechanisms of the stories model, each with its dataset, how the model does, and its circuit."""

from pathlib import Path

import streamlit as st

from workbench import tasks, ui
from workbench.figures import tasks as draw

view = ui.View(
    "Tasks",
    "Each task is a regularity of the stories model's training text, measured on names and templates it never saw: "
    "how often the model gets it right, by how much (logit difference), and which heads and MLPs do it — found by "
    "activation patching and confirmed by ablating them. Open a task in Patching, the Graph or Intervene to see it yourself.",
    shared=("model",),
    params=(ui.choice("task", list(tasks.TASKS)), ui.number("pair", int, 0, 10_000)),
)
model = view.start()
folder = Path(model.info.source)

with ui.guard("the tasks"):
    names = tasks.available(folder)
    if not names:
        st.info(f"The model '{model.info.name}' ships no task datasets. The stories model does.", icon="📚")
        st.button("Open the stories model", on_click=ui.open_model, args=("stories",), type="primary")
        st.stop()
    cards = {c.name: c for c in tasks.card(folder)}
    st.dataframe(
        [
            {
                "task": c.name,
                "what it tests": c.description,
                "pairs": c.pairs,
                "accuracy": f"{c.accuracy:.0%}",
                "logit difference": round(c.logit_diff, 2),
                "corrupted": round(c.corrupted_logit_diff, 2),
                "components": ", ".join(c.labels) or "–",
                "ablation cuts": "–" if c.ablation_cut is None else f"{c.ablation_cut:.0%}",
                "random cuts": "–" if c.random_cut is None else f"{c.random_cut:.0%}",
                "circuit": c.verdict,
            }
            for c in cards.values()
        ],
        hide_index=True,
        width="stretch",
    )
    ui.figure(draw.tasks_figure(list(cards.values())), "tasks", list(cards.values()), [c.__dict__ for c in cards.values()])
    st.caption(
        "Measured on held-out names and templates with the plain transformers model (the model card, "
        "`python -m workbench.train card stories`). Ablation: the named components' outputs taken from the corrupted "
        "prompt; random: as many other components. A circuit is *found* when ablating it cuts the logit difference by half "
        "or more and random components cut it by less than a fifth; a task the model does not solve is *absent*."
    )

    c1, c2 = st.columns([1, 2])
    name = c1.selectbox("Task", names, key=view.key("task"), format_func=lambda n: f"{n}: {tasks.TASKS[n]}")
    task = tasks.load(folder, name)
    index = c2.number_input("Pair", 0, len(task.pairs) - 1, key=view.key("pair"))
    pair = task.pairs[int(index)]
    st.markdown(f"**Clean:** `{pair.clean}` → answer `{pair.answer}`  \n**Corrupted:** `{pair.corrupted}` → wrong `{pair.wrong}`")
    found = cards.get(name)
    components = found.components if found else ()
    links = tasks.links(model.info.name, pair, components)
    st.markdown(
        " · ".join(
            [
                f"[Open in Patching]({links['Patching']}) (every head's output, denoising)",
                f"[the Graph]({links['Graph']}) (the clean prompt, answer against wrong)",
                f"[Intervene]({links['Intervene']})"
                + (f" (the circuit {', '.join(found.labels)} ablated)" if found and found.labels else ""),
            ]
        )
    )
    st.button("Use this pair on every page", on_click=ui.set_pair, args=(pair.clean, pair.corrupted))
    with st.expander(f"All {len(task.pairs)} pairs of {name} (tasks/{name}.json)"):
        st.dataframe([p.__dict__ for p in task.pairs], hide_index=True, width="stretch")
    ui.probe_command("tasks", model, task=name)
view.share()
