"""figures.generate: the next-token bars and the generation steps of the home page."""

from workbench.figures import generate as draw
from workbench.generate import Sampling, generate
from workbench.runs import next_token_topk, run_prompt


def test_next_token_bars_put_the_most_likely_on_top(english):
    top = next_token_topk(english, run_prompt(english, "My dear sister,"), k=5)
    bar = draw.topk_bar(top).data[0]
    assert list(bar.x)[::-1] == top.probs and bar.y[-1].startswith("1. ")
    assert (bar.marker.cmin, bar.marker.cmax) == (0, 1)  # probabilities: the sequential 0..1 scale


def test_generation_marks_the_chosen_token(english):
    gen = generate(english, "The whale", Sampling(max_new_tokens=3))
    fig = draw.generation_steps(gen)
    assert len(fig.data[0].y) == 3 and all(row[0].startswith("▶") for row in fig.data[0].text)  # greedy: the top candidate
