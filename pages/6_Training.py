"""Training: how the model's heads formed, checkpoint by checkpoint, with the induction phase change marked."""

import streamlit as st

from workbench import formation, ui
from workbench.figures import formation as draw

view = ui.View(
    "Training",
    "How the mechanisms formed: every head's score at each shipped checkpoint of a model's training run, the in-context loss, "
    "and the loss curve. Open any checkpoint in the other views as MODEL@STEP.",
    shared=("model",),
    params=(ui.choice("trained", formation.trained_models()),),
)
formed = view.cached(formation.formation, entries=4, spinner="Scoring every checkpoint…")
model = view.start()
with ui.guard("the training checkpoints"):
    trained = formation.trained_models()
    base = model.info.name.split("@")[0]
    name = st.selectbox("Trained model", trained, index=trained.index(base) if base in trained else 0, key=view.key("trained"))
    f = formed(name)
    ui.probe_command("training", ui.cached_model(name))
    if f.phase_change is not None:
        st.success(
            f"Induction phase change between steps **{f.phase_change[0]}** and **{f.phase_change[1]}**: the best layer's induction "
            f"score (its heads together) rose from {float(f.best_layer('induction')[f.steps.index(f.phase_change[0])]):.2f} to "
            f"{float(f.best_layer('induction')[f.steps.index(f.phase_change[1])]):.2f}."
        )
    else:
        st.info("No induction phase change between these checkpoints (no rise of the best layer's induction score of 0.1 or more).")
    ui.figure(draw.head_scores_over_training(f), f"{name}-head-scores-over-training", f, f.rows())
    c1, c2 = st.columns(2)
    with c1:
        ui.figure(draw.in_context_loss(f), f"{name}-in-context-loss", f)
    with c2:
        ui.figure(draw.loss_curve(f), f"{name}-loss-curve", f)
    step = st.select_slider("Open a checkpoint in the other views", options=list(f.steps), value=f.steps[-1], key="w.training_step")
    st.markdown(f"Model name for the sidebar, a link or a probe: `{name}@{step}`")
    st.button(f"Use {name}@{step} on every page", key="w.training_use", on_click=ui.open_model, args=(f"{name}@{step}",))

view.share()
