"""The nnsight backend against the transformer-lens bridge: the same views, the same numbers (within 1e-4).

Each family (GPT-2, Llama, GPT-NeoX: tiny random models from families.py) is loaded three ways: the
bridge (compatibility mode), nnsight running here, and nnsight through its simulation of an NDIF
server (every trace serialized, then run with this checkout's modules hidden, as a server runs it).
The backend runs the raw Hugging Face weights, so quantities are compared where they are invariant:
logits, patterns, neurons, the logit lens, patching metrics, DLA of components; residual-stream
values after removing their mean (compatibility mode centres the writing weights).
"""

from __future__ import annotations

import socket

import pytest
import torch

from workbench import attention, attribution, families, lens, nnsight_backend, patching, runs, tasks
from workbench import interventions as iv
from workbench.errors import InputError
from workbench.model import load_model

pytestmark = pytest.mark.slow
TOL = 1e-4
CLEAN = "The cat sat on the mat and the cat"
CORRUPTED = "The dog sat on the mat and the dog"


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt_neox"])
def trio(request, tmp_path_factory):
    """(bridge, nnsight here, nnsight through a simulated server) of one family's tiny model."""
    folder = families.build(request.param, tmp_path_factory.mktemp(request.param) / "model")
    return load_model(str(folder)), load_model(f"nnsight:{folder}"), nnsight_backend.load(f"nnsight:{folder}", simulate_remote=True)


def _setup(model) -> tasks.Pair:
    top = runs.next_token_topk(model, runs.run_prompt(model, CLEAN), 2)
    return tasks.Pair(CLEAN, CORRUPTED, top.ids[0], top.ids[1])


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def test_runs_equal_the_bridge(trio):
    bridge, local, remote = trio
    names = runs.all_hook_names(local)
    ref = runs.run_prompt(bridge, CLEAN, [n for n in names if runs.has_hook(bridge, n)])
    for model in (local, remote):
        run = runs.run_prompt(model, CLEAN, names)
        assert (run.logits - ref.logits).abs().max() < TOL
        assert runs.next_token_topk(model, run, 5).ids == runs.next_token_topk(bridge, ref, 5).ids
        for name in names:
            if name not in ref.cache:
                continue
            got, want = run[name], ref[name]
            if name.endswith(("hook_pattern", "mlp.hook_post")):
                assert (got - want).abs().max() < TOL, name
            elif name.endswith("attn.hook_z"):
                # the bridge folds the value bias (and the layer norm's bias) into b_O: a constant per head
                shift = got - want  # (pos, head, d_head)
                assert (shift - shift[:1]).abs().max() < TOL, name
            else:
                assert (_centred(got) - _centred(want)).abs().max() < TOL, name


def test_attention_patterns(trio):
    bridge, local, _ = trio
    want, got = attention.patterns(bridge, CLEAN).pattern, attention.patterns(local, CLEAN).pattern
    assert got.shape == want.shape and (got - want).abs().max() < TOL
    assert torch.allclose(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-5)


def test_logit_lens(trio):
    bridge, local, remote = trio
    want = lens.lens(bridge, CLEAN, tracked=[5, 9])
    for model in (local, remote):
        got = lens.lens(model, CLEAN, tracked=[5, 9])
        assert got.points == want.points
        assert (got.tracked_logits - want.tracked_logits).abs().max() < TOL
        assert (got.kl_to_final - want.kl_to_final).abs().max() < TOL
        assert torch.equal(got.top_ids[:, :, 0], want.top_ids[:, :, 0])


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "z", "z_pos"])
def test_patching_sweep(trio, site):
    bridge, local, remote = trio
    setup = _setup(bridge)
    want = patching.sweep(bridge, setup, site)
    assert want.backend == "engine"
    # the simulated server costs seconds per request here: two sites check it (a request per sweep, its bytes)
    for model in (local, remote) if site in ("resid_pre", "z_pos") else (local,):
        before = model.backend.traffic.snapshot()
        got = patching.sweep(model, setup, site)
        spent = model.backend.traffic.since(before)
        assert got.backend == "nnsight"
        assert (got.raw - want.raw).abs().max() < TOL
        assert got.clean_value == pytest.approx(want.clean_value, abs=TOL)
        # a sweep is one trace (one request to a server): the clean, corrupted and patched runs are its invokes, and
        # what comes back is one metric per cell and the two runs' last logits
        assert spent.requests == 1
        assert spent.received_bytes == 4 * (got.raw.numel() + 2 * bridge.info.d_vocab)
        assert (spent.sent_bytes > 0) == (model is remote)


def test_attribution_patching(trio):
    bridge, local, _ = trio
    setup = _setup(bridge)
    for site in ("resid_pre", "z"):
        want, got = patching.attribution_sweep(bridge, setup, site), patching.attribution_sweep(local, setup, site)
        assert (got.raw - want.raw).abs().max() < TOL


def test_input_gradients(trio):
    bridge, local, _ = trio
    answer = attribution.Answer((5,))
    want, got = attribution.input_attribution(bridge, CLEAN, answer), attribution.input_attribution(local, CLEAN, answer)
    assert (got.scores - want.scores).nan_to_num().abs().max() < TOL
    assert got.completeness_gap() == pytest.approx(want.completeness_gap(), abs=TOL)  # the same integral, the same error


def test_direct_logit_attribution(trio):
    bridge, local, remote = trio
    want = attribution.component_attribution(bridge, CLEAN, 5, 7)
    for model in (local, remote):
        got = attribution.component_attribution(model, CLEAN, 5, 7)
        assert got.components == want.components
        assert (got.component_values - want.component_values).abs().max() < TOL
        assert got.logit == pytest.approx(want.logit, abs=TOL)
        assert float(got.component_values.sum()) == pytest.approx(got.logit, abs=TOL)  # DLA adds up to the logit
        assert (got.cumulative - want.cumulative).abs().max() < TOL
        assert [(n["layer"], n["neuron"]) for n in got.neurons[:5]] == [(n["layer"], n["neuron"]) for n in want.neurons[:5]]


EDITS = [
    iv.EditSet((iv.Ablate("mlp", 1, None, "zero"),)),
    iv.EditSet((iv.Ablate("head", 1, 2, "mean"),)),
    iv.EditSet((iv.Ablate("neuron", 0, 3, "zero"),)),
    iv.EditSet((iv.Clamp("neuron", 1, 5, 3.0),)),
    iv.EditSet((iv.Steer(1, 2.0, "prompts", ("The sea is blue",), ("The land is green",)),)),
]


@pytest.mark.parametrize("edits", EDITS, ids=lambda e: e.edits[0].label())
def test_interventions(trio, edits):
    bridge, local, remote = trio
    sampling = iv.Sampling(max_new_tokens=3)
    want = iv.intervene(bridge, CLEAN, edits, sampling=sampling)
    for model in (local, remote) if edits is EDITS[-1] else (local,):
        got = iv.intervene(model, CLEAN, edits, sampling=sampling)
        assert (got.edited_probs - want.edited_probs).abs().max() < TOL
        assert (got.kl - want.kl).abs().max() < TOL
        assert [s.chosen_id for s in got.edited.steps] == [s.chosen_id for s in want.edited.steps]


def test_zero_ablating_a_head_differs_by_the_folded_bias(trio):
    """Documented, not hidden: zeroing hook_z removes the head's constant here, keeps it on the bridge (NOTES.md)."""
    bridge, local, _ = trio
    edits = iv.EditSet((iv.Ablate("head", 1, 2, "zero"),))
    want, got = (
        iv.intervene(bridge, CLEAN, edits, sampling=iv.Sampling(max_new_tokens=1)),
        iv.intervene(local, CLEAN, edits, sampling=iv.Sampling(max_new_tokens=1)),
    )
    bias_free = bridge.info.architecture.startswith("Llama")
    assert ((got.edited_probs - want.edited_probs).abs().max() < TOL) == bias_free


def test_generation(trio):
    bridge, local, _ = trio
    ids, _ = runs.encode(local, CLEAN)
    out = local.backend.generate(ids[None], 4)  # (1, pos + 4)
    tokens = ids[None]
    for _ in range(4):  # greedy by hand on the bridge
        logits, _ = runs.run_tokens(bridge, tokens, last_only=True)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert out.tolist() == tokens.tolist()


def test_refusals(trio):
    _, local, _ = trio
    ids, _ = runs.encode(local, CLEAN)
    with pytest.raises(InputError, match="attention pattern"):
        runs.run_tokens(local, ids[None], hooks=[("blocks.0.attn.hook_pattern", lambda act, hook: act * 0)])
    with pytest.raises(InputError, match="transformer-lens's bridge"):  # per-head weights W_O: folded weights
        runs.head_results(local, runs.run_prompt(local, CLEAN, ["blocks.1.attn.hook_z"]), 1)
    with pytest.raises(InputError, match="no site"):  # queries before rotary are inside the attention module
        attention.head_anatomy(local, CLEAN, 1, 0, 3)
    with pytest.raises(InputError, match="no site"):
        runs.run_tokens(local, ids[None], names=["blocks.0.attn.hook_q"])
    assert local.attached_hooks() == []


def test_names():
    assert nnsight_backend.split_name("nnsight:models/english") == ("models/english", None)
    assert nnsight_backend.split_name("ndif://127.0.0.1:8001/org/name") == ("org/name", "http://127.0.0.1:8001")
    assert nnsight_backend.split_name("ndif://api.ndif.us:443/openai-community/gpt2") == (
        "openai-community/gpt2",
        "https://api.ndif.us:443",
    )
    for bad in ("nnsight:", "ndif://nohost/gpt2", "ndif://h:99999/gpt2"):
        with pytest.raises(InputError):
            nnsight_backend.split_name(bad)


def test_unknown_family_is_refused(tmp_path):
    folder = families.build_bloom(tmp_path / "bloom")
    with pytest.raises(InputError, match="module layout"):
        load_model(f"nnsight:{folder}")


def test_a_server_that_does_not_answer_is_one_line(tmp_path):
    folder = families.build("gpt2", tmp_path / "gpt2")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = load_model(f"ndif://127.0.0.1:{port}/{folder}")
    assert model.info.kind == "NDIF server" and model.backend.mode == "remote"
    with pytest.raises(InputError, match="did not complete the request") as err:
        runs.run_prompt(model, CLEAN)
    assert "\n" not in str(err.value)


def test_two_sessions_at_once_see_only_their_own_edits(trio):
    """Threads share one nnsight model (one server process, many sessions): each run's edits stay in its own trace."""
    import threading

    _, local, _ = trio
    ids, _ = runs.encode(local, CLEAN)
    plain, _ = runs.run_tokens(local, ids[None], last_only=True)
    ablated, _ = runs.run_tokens(local, ids[None], hooks=[("blocks.1.hook_mlp_out", lambda act, hook: act * 0)], last_only=True)
    assert not torch.allclose(plain, ablated)
    wrong = []

    def session(edit: bool) -> None:
        for _ in range(6):
            hooks = [("blocks.1.hook_mlp_out", lambda act, hook: act * 0)] if edit else []
            got, _ = runs.run_tokens(local, ids[None], hooks=hooks, last_only=True)
            if not torch.allclose(got, ablated if edit else plain, atol=1e-6):
                wrong.append(edit)

    threads = [threading.Thread(target=session, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
