"""The patching sites (patch_sites.py): each site's grid against the model's shape, the cells and passes a sweep plans
against a brute-force enumeration, and a site's edit and reduction against indexing by hand. (The sweeps that use them
are checked against transformer-lens's own patching in test_patching.py.)"""

import itertools

import pytest
import torch

from workbench import families, patch_sites
from workbench.errors import InputError
from workbench.model import load_model
from workbench.patch_sites import SITES


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A llama with 4 query heads and 2 key/value heads: the k and v sites count the key/value heads."""
    return load_model(str(families.build("llama", tmp_path_factory.mktemp("grouped"), heads=4, kv_heads=2)))


def test_each_sites_grid_is_the_models_shape_and_its_cells_every_index_in_order(grouped):
    i, n = grouped.info, 7
    assert (i.n_heads, i.n_kv_heads) == (4, 2)
    size = {"layer": i.n_layers, "position": n}
    for name, s in SITES.items():
        heads = i.n_kv_heads if s.engine_site in ("k", "v") else i.n_heads
        want = tuple({**size, "head": heads}[a] for a in s.axes)
        assert s.axes[0] == "layer" and s.shape(grouped, n) == want, name
        assert s.cells(grouped, n) == list(itertools.product(*(range(k) for k in want))), name  # row-major
    hooks = set(grouped.bridge.hook_dict)  # transformer-lens's own hook points on this model
    assert all(s.hook(layer) in hooks for s in SITES.values() for layer in range(i.n_layers))


@pytest.mark.parametrize("site", ["resid_pre", "z_pos", "z", "k_pos"])
@pytest.mark.parametrize("n_tokens, per_batch", [(5, 3), (40, 16), (9, 64)])
def test_plan_passes_holds_every_kept_cell_once_in_layer_order_within_a_span_of_positions(circuits, site, n_tokens, per_batch):
    s = SITES[site]
    cells = s.cells(circuits, n_tokens)
    for window in (None, (2, n_tokens - 1)):
        keep = patch_sites.window_cells(s, cells, window, n_tokens)
        # the window by hand: every cell whose position (when the site has one) lies in it
        axis = s.axes.index("position") if "position" in s.axes else None
        assert keep == [k for k, c in enumerate(cells) if window is None or axis is None or window[0] <= c[axis] < window[1]]
        passes = patch_sites.plan_passes(s, cells, per_batch, n_tokens, keep)
        assert sorted(k for p in passes for k in p) == sorted(keep)  # each kept cell once, nothing else
        span = -(-n_tokens // patch_sites.SPLIT)
        for p in passes:
            assert 0 < len(p) <= per_batch and [cells[k][0] for k in p] == sorted(cells[k][0] for k in p)
            if axis is not None:  # one pass's runs start at its first position: its positions lie in one span
                assert len({cells[k][axis] // span for k in p}) == 1


def test_a_window_outside_the_prompt_is_refused(circuits):
    s = SITES["resid_pre"]
    with pytest.raises(InputError, match="window"):
        patch_sites.window_cells(s, s.cells(circuits, 6), (4, 9), 6)
    with pytest.raises(InputError, match="unknown site 'neurons'"):
        patch_sites.site_named("neurons")


def test_a_sites_edit_takes_each_cells_slice_and_reduce_sums_to_the_cells():
    pos, heads, d_head = 5, 3, 4
    z = torch.randn(pos, heads, d_head)  # (pos, head, d_head): one layer's source activation
    cells = [(0, 2, 1), (0, 0, 4)]  # (layer, head, position)
    edit = SITES["z_pos"].edit(0, cells, z, offset=1)
    assert torch.equal(edit.value, torch.stack([z[1, 2], z[4, 0]])) and edit.position.tolist() == [0, 3]  # counted from offset
    edit = SITES["z"].edit(0, [(0, 1), (0, 2)], z)
    assert torch.equal(edit.value, torch.stack([z[:, 1], z[:, 2]])) and edit.position is None  # the head at every position
    resid = torch.randn(pos, 8)
    assert torch.equal(SITES["resid_pre"].edit(0, [(0, 3)], resid).value, resid[[3]])
    effect = torch.randn(pos, heads, d_head)
    by_hand = torch.tensor([[float(effect[p, h].sum()) for p in range(pos)] for h in range(heads)])  # (head, pos)
    assert torch.allclose(SITES["z_pos"].reduce(effect), by_hand, atol=1e-6)
    assert torch.allclose(SITES["z"].reduce(effect), by_hand.sum(1), atol=1e-6)
    assert torch.allclose(SITES["resid_pre"].reduce(resid), torch.tensor([float(r.sum()) for r in resid]), atol=1e-6)


def test_batch_size_fits_the_memory_budget_and_shrinks_with_the_prompt(circuits, monkeypatch):
    assert patch_sites.batch_size(circuits, 12) == patch_sites.BATCH  # a small model: the cap
    monkeypatch.setattr(patch_sites, "memory_budget", lambda: 10 * 2**20)  # 10 MiB
    sizes = [patch_sites.batch_size(circuits, n) for n in (64, 256, 1024)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] >= 1 and sizes[0] > sizes[-1]
