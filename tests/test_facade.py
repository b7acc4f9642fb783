"""The facade (`import workbench as wb`): each view is its analysis module's own result, checked where cheap against plain
`transformers`; results read back from JSON, the probes' files included; bad input is one line; `wb.edits` leaves nothing."""

import dataclasses
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import probes.__main__ as registry
import workbench as wb
from workbench import attention, attribution, features, graph, lens, notebook, patching, tasks
from workbench import interventions as iv
from workbench import sae as wb_sae
from workbench.generate import Sampling
from workbench.runs import encode

ROOT = Path(__file__).resolve().parents[1]
CLEAN = "apple river stone cloud tiger piano candle garden apple river stone"
CORRUPTED = "apple river stone lemon tiger piano candle garden apple river stone"
REPEATED = "apple river stone cloud tiger apple river stone cloud"


def same(a, b, path="result") -> None:
    """Asserts that two results hold the same values (tensors equal, NaN where NaN; dataclasses field by field)."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, f"{path}: shape {tuple(a.shape)} vs {getattr(b, 'shape', b)}"
        assert a.dtype == b.dtype, f"{path}: {a.dtype} vs {b.dtype}"
        assert torch.equal(a.nan_to_num(123.0), b.nan_to_num(123.0)) and torch.equal(a.isnan(), b.isnan()), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(map(str, a)) == list(map(str, b)), f"{path}: keys {list(a)[:5]} vs {list(b)[:5]}"
        for (k, v), w in zip(a.items(), b.values(), strict=True):
            same(v, w, f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{path}: length {len(a)} vs {len(b) if hasattr(b, '__len__') else b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, path
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _hf(model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model.info.source, use_safetensors=True, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def hf(circuits):
    return _hf(circuits)


def _ids(model, prompt):
    return encode(model, prompt)[0]


# ---- each view is its analysis's own result, and an independent reference where cheap ----------------------


def test_attention_is_the_analysis_and_plain_transformers_output_attentions(circuits, hf):
    r = wb.attention(circuits, REPEATED, head="1.2")
    same(r.data, attention.patterns(circuits, REPEATED))
    with torch.no_grad():
        reference = torch.stack(hf(_ids(circuits, REPEATED)[None], output_attentions=True).attentions)[:, 0]  # (layer, head, q, k)
    assert torch.allclose(r.pattern, reference, atol=1e-5)
    assert torch.allclose(r.pattern.sum(-1), torch.ones(r.pattern.shape[:-1]), atol=1e-5)  # each query's row sums to 1
    assert r.focus == {"head": (1, 2)} and r.figure().data[0].z is not None
    table = r.to_pandas()
    assert len(table) == len(r.labels) * (len(r.labels) + 1) // 2  # the visible triangle of one head
    assert torch.allclose(
        torch.tensor(table["weight"].to_numpy()).float(), r.pattern[1, 2].tril()[torch.ones_like(r.pattern[1, 2]).tril().bool()]
    )


def test_head_types_find_the_induction_heads_the_repeated_prompt_shows(circuits):
    r = wb.head_types(circuits, REPEATED)
    same(r.data.scores, attention.head_types(circuits, wb.run(circuits, REPEATED, "attn.hook_pattern")).scores)
    # by hand: the induction score of a head is its attention from each repeated token to the token after its first occurrence
    p = r.data.scores["induction"]
    pattern = attention.patterns(circuits, REPEATED).pattern  # (layer, head, q, k); tokens: BOS a b c d e a b c d
    by_hand = torch.stack([pattern[:, :, q, q - 4] for q in range(6, 10)], -1).mean(-1)  # query q's earlier copy is q-5; next token q-4
    assert torch.allclose(p, by_hand, atol=1e-6)


def test_the_lens_is_the_analysis_and_its_last_point_is_plain_transformers_logits(circuits, hf):
    r = wb.lens(circuits, REPEATED, track=[" cloud"])
    same(r.data, lens.lens(circuits, REPEATED, tracked=[circuits.tokenizer(" cloud")["input_ids"][0]]))
    with torch.no_grad():
        logits = hf(_ids(circuits, REPEATED)[None]).logits[0]  # (pos, d_vocab)
    top = logits.softmax(-1).topk(5)
    assert torch.allclose(r.top_probs[-1], top.values, atol=1e-5) and torch.equal(r.top_ids[-1], top.indices)
    assert torch.allclose(r.tracked_logits[-1, :, 0], logits[:, r.tracked_ids[0]], atol=1e-4)
    assert len(r.to_pandas()) == len(r.points) * len(r.labels)
    assert r.figure_names == ["lens", "stats", "tracked"] and r.figure("tracked").data


def test_patching_is_the_analysis_and_its_clean_metric_is_plain_transformers(circuits, hf):
    r = wb.patch(circuits, CLEAN, CORRUPTED, answer=" cloud", wrong=" lemon")
    answer, wrong = (circuits.tokenizer(t)["input_ids"][0] for t in (" cloud", " lemon"))
    same(r.data, patching.sweep(circuits, tasks.Pair(CLEAN, CORRUPTED, " cloud", " lemon"), "resid_pre"))
    assert (r.provenance["settings"]["answer"], r.provenance["settings"]["wrong"]) == (answer, wrong)  # the tokenizer's ids
    with torch.no_grad():
        clean, corrupted = (hf(_ids(circuits, p)[None]).logits[0, -1] for p in (CLEAN, CORRUPTED))
    assert r.clean_value == pytest.approx(float(clean[answer] - clean[wrong]), abs=1e-4)
    assert r.corrupted_value == pytest.approx(float(corrupted[answer] - corrupted[wrong]), abs=1e-4)
    # the prompts differ only at position 4 (cloud / lemon): its clean embedding, patched in before layer 0, is the clean run
    assert float(r.values[0, 4]) == pytest.approx(1.0, abs=1e-4)
    assert r.figure().data[0].z is not None and len(r.to_pandas()) == r.values.numel()


def test_patching_the_clean_prompt_into_itself_leaves_the_clean_metric_everywhere(circuits, hf):
    r = wb.patch(circuits, CLEAN, CLEAN, answer=" cloud", wrong=" lemon", site="z")
    with torch.no_grad():
        last = hf(_ids(circuits, CLEAN)[None]).logits[0, -1]
    ids = circuits.tokenizer(" cloud lemon")["input_ids"]
    assert torch.allclose(r.raw, torch.full_like(r.raw, float(last[ids[0]] - last[ids[1]])), atol=1e-4)
    assert torch.isnan(r.values).all() and "same metric" in r.note  # nothing to restore: not normalised, and said so


def test_attribution_is_the_analysis_and_adds_up(circuits, hf):
    answer, wrong = (circuits.tokenizer(t)["input_ids"][0] for t in (" cloud", " lemon"))
    r = wb.attribute(circuits, CLEAN, answer=" cloud", wrong=" lemon", steps=16)
    same(r.data, attribution.input_attribution(circuits, CLEAN, attribution.Answer((answer,), wrong), steps=16))
    with torch.no_grad():
        last = hf(_ids(circuits, CLEAN)[None]).logits[0, -1]
    assert float(r.metric[0]) == pytest.approx(float(last[answer] - last[wrong]), abs=1e-4)
    assert r.completeness_gap() < 0.05 * abs(float(r.metric[0] - r.metric_baseline[0]))  # integrated gradients add up
    dla = wb.attribute(circuits, CLEAN, answer=" cloud", wrong=" lemon", method="direct logit attribution")
    same(dla.data, attribution.component_attribution(circuits, CLEAN, answer, wrong))
    # DLA reads the logit without the unembedding's bias, which compatibility mode folds from the final norm's bias: β·W_U
    folded = (hf.transformer.ln_f.bias @ hf.lm_head.weight.T).detach()  # (d_vocab,)
    assert dla.logit == pytest.approx(float(last[answer] - last[wrong] - folded[answer] + folded[wrong]), abs=1e-4)
    assert float(dla.component_values.sum()) == pytest.approx(dla.logit, abs=1e-4)  # the components add up to it
    assert dla.figure_names == ["components", "heads"] and dla.figure("heads").data


def test_graph_and_features_are_their_analyses(circuits, english):
    r = wb.graph(circuits, CLEAN, answer=" cloud")
    same(r.data, graph.build(circuits, CLEAN, answer=circuits.tokenizer(" cloud")["input_ids"][0]))
    assert r.error < 1e-3 and len(r.to_pandas()) == len(r.edges)
    f = wb.features(english, "The whale swam to the ship", sae="blocks.1.hook_resid_post", feature=3)
    same(f.data, features.prompt_features_of(english, "The whale swam to the ship"))
    assert f.figure().data and f.figure("feature").data and set(f.to_pandas()["feature"]) == {3}


def test_intervene_is_the_analysis_and_its_before_is_plain_transformers(circuits, hf):
    r = wb.intervene(circuits, REPEATED, "ablate head 1.2 zero-whole", answer=" tiger", tokens=4)
    tiger = circuits.tokenizer(" tiger")["input_ids"][0]
    same(
        r.data,
        iv.intervene(
            circuits, REPEATED, iv.EditSet.parse("ablate head 1.2 zero-whole"), iv.Metric("probability", tiger), Sampling(max_new_tokens=4)
        ),
    )
    with torch.no_grad():
        last = hf(_ids(circuits, REPEATED)[None]).logits[0, -1]
    assert r.before == pytest.approx(float(last.softmax(-1)[tiger]), abs=1e-5)
    assert r.figure_names == ["next token", "kl", "continuations"] and len(r.to_pandas()) == len(r.ids)


# ---- results as data: JSON both ways, the probes' files, the notebook's display -------------------------------


RESULTS = ["attention", "head_types", "lens", "lens untracked", "patch", "nothing to restore", "atp", "attribute", "saliency", "dla"]
RESULTS += ["graph", "intervene", "features"]


@pytest.fixture(scope="module")
def results(circuits, english):
    return {
        "attention": wb.attention(circuits, REPEATED, head="1.0"),
        "head_types": wb.head_types(circuits, REPEATED),
        "lens": wb.lens(circuits, REPEATED, track=" cloud"),
        "lens untracked": wb.lens(circuits, REPEATED),  # empty (point, position, 0) tensors keep their dtype
        "nothing to restore": wb.patch(circuits, CLEAN, CLEAN, answer=" cloud", wrong=" lemon"),  # NaN values
        "saliency": wb.attribute(circuits, CLEAN, answer=" cloud", method="saliency"),  # NaN deltas
        "patch": wb.patch(circuits, CLEAN, CORRUPTED, answer=" cloud", wrong=" lemon", site="z"),
        "atp": wb.patch(circuits, CLEAN, CORRUPTED, answer=" cloud", wrong=" lemon", method="AtP*"),
        "attribute": wb.attribute(circuits, CLEAN, answer=" cloud", steps=8),
        "dla": wb.attribute(circuits, CLEAN, answer=" cloud", method="direct logit attribution"),
        "graph": wb.graph(circuits, CLEAN, wrong=" lemon", answer=" cloud"),
        "intervene": wb.intervene(circuits, REPEATED, "ablate head 1.0 mean; clamp neuron 0.5 2", tokens=3),
        "features": wb.features(english, "The whale swam", sae="blocks.0.hook_resid_pre"),
    }


@pytest.mark.parametrize("name", RESULTS)
def test_a_result_reads_back_from_its_json_with_its_figure(results, name, tmp_path):
    r = results[name]
    back = wb.from_json(r.to_json(tmp_path / "r.json"))
    same(back.data, r.data)
    assert back.focus == r.focus and type(back) is wb.Result
    same(wb.Result.from_json(tmp_path / "r.json").data, r.data)
    assert json.loads(back.figure().to_json()) == json.loads(r.figure().to_json())  # the same figure, drawn from the read result


def test_a_result_shows_inline_in_a_notebook_offline(results):
    r = results["patch"]
    shown = r._repr_mimebundle_()
    assert shown[notebook.PLOTLY_MIME]["data"] == json.loads(r.figure().to_json())["data"]
    html = r._repr_html_()
    assert "Plotly.newPlot" in html and "<script src=" not in html


def _probe(name, tmp_path, *args):
    out = tmp_path / name
    assert registry.main([name, "--out", str(out), "--formats", "html", *args]) == 0
    return out


def test_a_probes_output_reads_back_as_the_result_that_made_it(circuits, tmp_path):
    pair = ["--clean", CLEAN, "--corrupted", CORRUPTED, "--answer", " cloud", "--wrong", " lemon"]
    out = _probe("patching", tmp_path, "--model", "circuits", "--site", "resid_pre", *pair)
    r = wb.from_json(out / "patching-resid_pre.json")
    same(r.data, wb.patch(circuits, CLEAN, CORRUPTED, answer=" cloud", wrong=" lemon").data)
    assert r.figure().data
    every = wb.from_json(out)  # the folder (its manifest) gives every data file that holds a result
    assert sorted(every) == ["patching-resid_pre", "patching-resid_pre-estimate"]
    assert every["patching-resid_pre-estimate"].method == "AtP*"
    same(wb.from_json(out / "manifest.json")["patching-resid_pre"].data, r.data)


def test_the_lens_and_graph_probes_read_back(circuits, tmp_path):
    out = _probe("lens", tmp_path, "--model", "circuits", "--prompt", REPEATED, "--track", " cloud")
    same(wb.from_json(out / "logit-lens-prompt0.json").data, wb.lens(circuits, REPEATED, track=" cloud").data)
    out = _probe("graph", tmp_path, "--model", "circuits", "--prompt", CLEAN, "--answer", " cloud", "--wrong", " lemon")
    g = wb.from_json(out / "graph-pos11.json")  # the node-link document the probe writes
    same(g.data, wb.graph(circuits, CLEAN, answer=" cloud", wrong=" lemon").data)
    assert g.figure("by head").data


def test_the_attention_attribution_and_intervene_probes_read_back(circuits, tmp_path):
    out = _probe("attention", tmp_path, "--model", "circuits", "--prompt", REPEATED, "--layer", "1", "--head", "2")
    same(wb.from_json(out / "patterns.json").data, wb.attention(circuits, REPEATED).data)
    assert list(wb.from_json(out)) == ["patterns"]  # one head's bare tensor and its arithmetic are not views of the facade
    out = _probe("attribution", tmp_path, "--model", "circuits", "--prompt", CLEAN, "--answer", " cloud", "--method", "saliency")
    same(wb.from_json(out / "input-saliency.json").data, wb.attribute(circuits, CLEAN, answer=" cloud", method="saliency").data)
    same(wb.from_json(out / "dla.json").data, wb.attribute(circuits, CLEAN, answer=" cloud", method="direct logit attribution").data)
    out = _probe("intervene", tmp_path, "--model", "circuits", "--prompt", REPEATED, "--edits", "ablate head 1.2 mean", "--tokens", "4")
    read = wb.from_json(out / "intervene.json")
    same(read.data, wb.intervene(circuits, REPEATED, "ablate head 1.2 mean", tokens=4).data)
    assert read.figure("continuations").data


def test_what_is_not_a_result_says_so_in_one_line(tmp_path):
    (tmp_path / "table.json").write_text("[1, 2]")
    (tmp_path / "other.json").write_text('{"a": 1}')
    for source in (tmp_path / "table.json", tmp_path / "other.json", tmp_path / "missing.json", "{not json"):
        with pytest.raises(wb.InputError) as err:
            wb.from_json(source)
        assert "\n" not in str(err.value)


# ---- bad input: the workbench's InputError, one readable line ------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: wb.attention(m, REPEATED, head="9.9"),
        lambda m: wb.attention(m, REPEATED, head="one.two"),
        lambda m: wb.patch(m, CLEAN, CORRUPTED, answer=" cloud tiger", wrong=" lemon"),
        lambda m: wb.patch(m, CLEAN, CORRUPTED, answer=" cloud", wrong=""),
        lambda m: wb.patch(m, CLEAN, CORRUPTED + " apple", answer=" cloud", wrong=" lemon"),
        lambda m: wb.lens(m, ""),
        lambda m: wb.run(m, "   "),
        lambda m: wb.run(m, REPEATED, "blocks.7.hook_resid_pre"),
        lambda m: wb.attribute(m, CLEAN, answer=" cloud", method="guessing"),
        lambda m: wb.features(m, REPEATED),  # the circuits model ships no SAEs
        lambda m: wb.edits(m, "ablate head 9.9 mean").__enter__(),
        lambda m: wb.edits(m, "remove head 1.2"),
        lambda m: wb.attention(m, REPEATED).figure(head="1.9"),
        lambda m: wb.lens("circuits", REPEATED),  # the model's name instead of the model
    ],
)
def test_bad_input_is_one_line(circuits, call):
    with pytest.raises(wb.InputError) as err:
        call(circuits)
    assert str(err.value) and "\n" not in str(err.value)


# ---- edits: data read by the facade's calls, nothing on the model -------------------------------------------


def _hf_zeroed_head(hf, ids, layer, head, d_head):
    """Plain transformers' logits (pos, d_vocab) with one head's slice of the output projection's input zeroed."""

    def pre(module, args):
        x = args[0].clone()
        x[..., head * d_head : (head + 1) * d_head] = 0.0
        return (x,)

    handle = hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            return hf(ids[None]).logits[0]
    finally:
        handle.remove()


def test_edits_apply_to_the_calls_inside_the_block_and_leave_nothing(circuits, hf):
    before = wb.run(circuits, REPEATED).logits.clone()
    lens_before = wb.lens(circuits, REPEATED).top_probs.clone()
    reference = _hf_zeroed_head(hf, _ids(circuits, REPEATED), 1, 2, circuits.info.d_head)
    with wb.edits(circuits, "ablate head 1.2 zero-whole") as e:
        assert e.labels == ["ablate L1H2 (zero, whole output)"]
        assert not circuits.attached_hooks()  # the block registers nothing on the model
        edited = wb.run(circuits, REPEATED)
        assert torch.allclose(edited.logits, reference, atol=1e-4)  # plain transformers with the head's output removed
        assert not torch.allclose(edited.logits, before, atol=1e-2)
        lensed = wb.lens(circuits, REPEATED)
        assert torch.allclose(lensed.top_probs[-1], reference.softmax(-1).topk(5).values, atol=1e-5)  # the lens read the edited run
        assert lensed.provenance["settings"]["edits"] == "ablate head 1.2 zero-whole"
        assert torch.allclose(
            wb.attention(circuits, REPEATED).pattern, attention.patterns(circuits, REPEATED).pattern
        )  # layer 1 reads layer 0
        assert wb.intervene(circuits, REPEATED, tokens=2).edit_labels == ["ablate L1H2 (zero, whole output)"]
        seen = {}
        thread = threading.Thread(target=lambda: seen.setdefault("logits", wb.run(circuits, REPEATED).logits))
        thread.start()
        thread.join()
        assert torch.equal(seen["logits"], before)  # another thread's calls are not in the block
        with pytest.raises(wb.InputError, match=r"does not run under wb\.edits"):
            wb.patch(circuits, CLEAN, CORRUPTED, answer=" cloud", wrong=" lemon")
    assert not circuits.attached_hooks()
    assert torch.equal(wb.run(circuits, REPEATED).logits, before) and torch.equal(wb.lens(circuits, REPEATED).top_probs, lens_before)
    with pytest.raises(ZeroDivisionError), wb.edits(circuits, "ablate head 1.2 zero-whole"):
        assert not torch.allclose(wb.run(circuits, REPEATED).logits, before, atol=1e-2)
        _ = 1 / 0
    assert not circuits.attached_hooks()
    assert torch.equal(wb.run(circuits, REPEATED).logits, before)  # an exception inside the block leaves nothing either
    with torch.no_grad():
        assert torch.allclose(before, hf(_ids(circuits, REPEATED)[None]).logits[0], atol=1e-4)


def test_attention_under_edits_is_plain_transformers_with_the_head_removed(circuits, hf):
    """Removing a layer-0 head changes what layer 1 attends to: the edited patterns are HF's with that head's slice zeroed."""
    ids = _ids(circuits, REPEATED)

    def pre(module, args):
        x = args[0].clone()
        x[..., : circuits.info.d_head] = 0.0  # head 0
        return (x,)

    handle = hf.transformer.h[0].attn.c_proj.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            reference = torch.stack(hf(ids[None], output_attentions=True).attentions)[:, 0]  # (layer, head, q, k)
    finally:
        handle.remove()
    with wb.edits(circuits, "ablate head 0.0 zero-whole"):
        edited = wb.attention(circuits, REPEATED)
        types = wb.head_types(circuits, REPEATED)
    assert torch.allclose(edited.pattern, reference, atol=1e-5)
    assert not torch.allclose(edited.pattern[1], attention.patterns(circuits, REPEATED).pattern[1], atol=1e-3)
    assert torch.allclose(types.scores["induction"], attention.head_types_of(reference, ids).scores["induction"], atol=1e-5)
    assert edited.provenance["settings"]["edits"] == "ablate head 0.0 zero-whole"


def test_nested_blocks_add_their_edits(circuits, hf):
    ids = _ids(circuits, REPEATED)
    with wb.edits(circuits, "ablate head 1.2 zero-whole"), wb.edits(circuits, "ablate head 1.3 zero-whole"):
        both = wb.run(circuits, REPEATED).logits

    def pre(module, args):
        x = args[0].clone()
        x[..., 2 * circuits.info.d_head :] = 0.0  # heads 2 and 3
        return (x,)

    handle = hf.transformer.h[1].attn.c_proj.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            reference = hf(ids[None]).logits[0]
    finally:
        handle.remove()
    assert torch.allclose(both, reference, atol=1e-4)


def test_features_under_edits_encode_plain_transformers_stream_with_the_head_removed(english):
    """An SAE on layer 1's output reads the edited stream: HF's block output with head 0.0's slice of c_proj's input zeroed."""
    prompt, hook = "The whale swam to the ship", "blocks.1.hook_resid_post"
    hf_english, ids, d_head, seen = _hf(english), _ids(english, "The whale swam to the ship"), english.info.d_head, {}

    def pre(module, args):
        x = args[0].clone()
        x[..., :d_head] = 0.0  # head 0
        return (x,)

    zero = hf_english.transformer.h[0].attn.c_proj.register_forward_pre_hook(pre)

    def read(module, args, out):  # returns None: the block's output stays as it is
        seen["stream"] = (out[0] if isinstance(out, tuple) else out)[0]  # (pos, d_model)

    keep = hf_english.transformer.h[1].register_forward_hook(read)
    try:
        with torch.no_grad():
            hf_english(ids[None])
    finally:
        zero.remove()
        keep.remove()
    sae = wb_sae.sae_set(english)[hook]
    plain = wb.features(english, prompt, sae=hook)
    with wb.edits(english, "ablate head 0.0 zero-whole"):
        edited = wb.features(english, prompt, sae=hook)
    with torch.no_grad():
        stream = seen["stream"].float()  # (pos, d_model)
        # the workbench's stream is HF's centred: the bridge centres the weights that write it (workbench/conventions.py)
        reference = sae.encode(stream - stream.mean(-1, keepdim=True))  # (pos, d_sae)
    assert torch.allclose(edited.acts[hook], reference, atol=1e-4)
    assert not torch.allclose(edited.acts[hook], plain.acts[hook], atol=1e-3)  # the edit reached the SAE
    assert edited.provenance["settings"]["edits"] == "ablate head 0.0 zero-whole"
    assert not english.attached_hooks()


# ---- the package: cheap to import, the analysis modules as before ------------------------------------------


def test_import_is_cheap_and_the_modules_are_still_modules():
    code = (
        "import sys, workbench as wb; assert 'torch' not in sys.modules; "
        "import workbench.lens as L; from workbench import attention, graph; import workbench.model; "
        "assert callable(wb.lens) and L is wb.lens and L.lens_points and attention.patterns and graph.build; "
        "assert wb.patch.__module__ == 'workbench.api'; "
        "assert 'streamlit' not in sys.modules and 'plotly' not in sys.modules; print('ok')"  # figures load when first drawn
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_readmes_using_the_library_block_runs_as_written():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using the library") :]
    code = section[section.index("```python\n") + len("```python\n") : section.index("```\n", section.index("```python\n") + 10)]
    assert code.count("import") == 1  # one import
    scope: dict = {}
    exec(compile(code, "README.md: Using the library", "exec"), scope)
    assert not scope["m"].attached_hooks()
    assert float(scope["ablated"].tracked_probs[-1, -1, 0]) < float(scope["lensed"].tracked_probs[-1, -1, 0])
    assert scope["run"]["blocks.1.attn.hook_pattern"].shape[0] == scope["m"].info.n_heads
