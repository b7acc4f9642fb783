"""figures.long: patterns drawn as images hold the pattern's numbers, stay under the stated size, and thin their labels."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_long import long_prompt
from workbench import attention, compare, families
from workbench.figures import long as draw
from workbench.model import load_model


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    folder = families.build("gpt2", tmp_path_factory.mktemp("deep"), layers=3, width=64, heads=4, mlp=128, positions=1024, init=0.3)
    return load_model(str(folder))


@pytest.fixture(scope="module")
def long_patterns(deep):
    return attention.patterns(deep, long_prompt(deep, 1024))


def pixels(fig) -> np.ndarray:
    """The palette indices of the figure's image, decoded from its data URI."""
    uri = fig.data[0].source
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.mode == "P"
    return np.array(image)


def expected_indices(grid: torch.Tensor) -> np.ndarray:
    """What each cell should be, computed independently: round(weight * 63), 64 for the future."""
    n = grid.shape[-1]
    want = (grid.double() * (draw.LEVELS - 1)).round().numpy().astype(np.int64)
    q, k = np.indices((n, n))
    want[k > q] = draw.MASK_INDEX
    return want


def test_grid_image_holds_every_head_at_every_token(long_patterns):
    p = long_patterns
    layers, heads, n = p.shape
    fig, factor = draw.grid_image(p)
    assert factor == 1
    img = pixels(fig)
    assert img.shape == (layers * (n + draw.GAP) - draw.GAP, heads * (n + draw.GAP) - draw.GAP)
    for layer, head in [(0, 0), (1, 3), (2, 2)]:
        cell = img[layer * (n + draw.GAP) : layer * (n + draw.GAP) + n, head * (n + draw.GAP) : head * (n + draw.GAP) + n]
        want = expected_indices(p.pattern[layer, head].float())
        assert np.abs(cell.astype(np.int64) - want).max() <= 1  # float16 -> float32 rounding at a level's edge
    gap = img[n : n + draw.GAP]
    assert (gap == draw.GAP_INDEX).all()


def test_figures_stay_under_the_stated_size(long_patterns):
    fig, _ = draw.grid_image(long_patterns)
    assert draw.figure_bytes(fig) <= draw.MAX_BYTES
    one = draw.head_image(long_patterns, 1, 2)
    assert draw.figure_bytes(one) <= draw.MAX_BYTES
    small, factor = draw.grid_image(long_patterns, max_bytes=200_000)  # too small for every token: pooled until it fits
    assert factor > 1 and draw.figure_bytes(small) <= 200_000


def test_one_head_image_thins_its_token_labels(long_patterns):
    fig = draw.head_image(long_patterns, 0, 1)
    n = long_patterns.shape[2]
    ticks = fig.layout.xaxis.tickvals
    assert 20 <= len(ticks) <= draw.MAX_TICKS and ticks[0] == 0 and max(ticks) < n
    assert fig.layout.xaxis.ticktext[1].startswith(f"{ticks[1]} ")  # position, then its token
    img = pixels(fig)
    assert np.abs(img.astype(np.int64) - expected_indices(long_patterns.pattern[0, 1].float())).max() <= 1


def test_thinned_keeps_every_label_when_few():
    t = draw.thinned(["a", "b", "c"])
    assert t["tickvals"] == [0, 1, 2] and t["ticktext"] == ["0 a", "1 b", "2 c"]


def test_diff_image_holds_the_difference_on_the_diverging_scale(deep):
    d = compare.pattern_diff(deep, long_prompt(deep, 600, seed=1), long_prompt(deep, 600, seed=2))
    fig = draw.diff_image(d, 2, 1)
    want = expected_indices((d.diff[2, 1].float() + 1) / 2)
    assert np.abs(pixels(fig).astype(np.int64) - want).max() <= 1
    assert draw.figure_bytes(fig) <= draw.MAX_BYTES
