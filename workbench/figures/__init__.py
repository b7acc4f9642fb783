"""Figures: plotly only, built from analysis results, never from the model (and never with streamlit).

One module per view, named after the analysis module it draws (`figures.attention` draws
`workbench.attention`'s results, `figures.patching` draws `workbench.patching`'s, ...), and
`figures.common` with what they all share: the colour scales, the heatmap trace, labels and layout.
A new view adds its own module here; nothing in this file lists them.
"""
