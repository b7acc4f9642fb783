import pytest
import torch

from tests.references import hf_model
from workbench import runs
from workbench.errors import InputError


@pytest.mark.parametrize(
    "prompt, match",
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("bad \ud800 surrogate", "not valid Unicode"),
        (b"\xff\xfe bytes", "not valid UTF-8"),
        ("nul \x00 inside", "control character"),
        (None, "must be text"),
        (42, "must be text"),
    ],
)
def test_bad_prompts_get_one_clear_message(english, prompt, match):
    with pytest.raises(InputError, match=match):
        runs.run_prompt(english, prompt)


def test_too_long_prompt_says_so_and_truncation_keeps_the_end(circuits):
    words = " ".join(["apple", "river", "stone"] * 60)  # 180 tokens > 128
    with pytest.raises(InputError, match="context is 128"):
        runs.run_prompt(circuits, words)
    run = runs.run_prompt(circuits, words, truncate=True)
    full = circuits.tokenizer(words, add_special_tokens=False)["input_ids"]
    assert run.n_tokens == 128 and run.truncated == len(full) + 1 - 128
    assert run.tokens[0] == circuits.bos_id and run.tokens[1:].tolist() == full[-127:]


def test_runs_are_shared_and_hold_what_was_asked(english):
    prompt = "Mr. Knightley was a sensible man."
    pattern0 = "blocks.0.attn.hook_pattern"
    a = runs.run_prompt(english, prompt, [pattern0])
    b = runs.run_prompt(english, prompt)  # asks for less: served by the same run
    assert b is a
    c = runs.run_prompt(english, prompt, ["blocks.1.hook_resid_post"])  # asks for more: one new run with both
    assert pattern0 in c.cache and "blocks.1.hook_resid_post" in c.cache
    assert torch.equal(c[pattern0], a[pattern0])
    assert runs.run_prompt(english, prompt, [pattern0]) is c
    with pytest.raises(ValueError, match="unknown hook"):
        runs.run_prompt(english, prompt, ["blocks.0.nope"])
    assert english.attached_hooks() == []


def test_logits_and_cache_match_plain_transformers(english):
    """The run's logits, residual stream and patterns against transformers' own forward (output_hidden_states and
    output_attentions), not the bridge that made the run."""
    run = runs.run_prompt(english, "The sea was calm", ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern"])
    with torch.no_grad():
        out = hf_model(english)(run.tokens[None], output_hidden_states=True, output_attentions=True)
    assert torch.allclose(run.logits, out.logits[0], atol=1e-4)
    hidden = out.hidden_states[1][0]  # (pos, d_model) block 1's input; compatibility mode centres the residual stream
    assert torch.allclose(run["blocks.1.hook_resid_pre"], hidden - hidden.mean(-1, keepdim=True), atol=1e-4)
    assert torch.allclose(run["blocks.0.attn.hook_pattern"], out.attentions[0][0], atol=1e-5)
    assert run.tokens[0] == english.bos_id and run.labels[0] == "<|endoftext|>"


def test_every_result_records_how_it_was_made(circuits):
    """Model and its source, prompt(s), settings, library versions: what a page, an export and a manifest read."""
    from workbench import attention, attribution, compare, generate, heads, lens, patching, tasks

    a, b = "apple river stone cloud apple river", "apple river stone lemon apple river"
    tok = circuits.tokenizer
    setup = tasks.Pair(a, b, tok(" stone")["input_ids"][0], tok(" lemon")["input_ids"][0])
    results = {
        "patterns": (attention.patterns(circuits, a), [a]),
        "lens": (lens.lens(circuits, a, tracked=[5]), [a]),
        "dla": (attribution.component_attribution(circuits, a, 5), [a]),
        "ig": (attribution.input_attribution(circuits, a, attribution.Answer((5,)), steps=4), [a]),
        "sweep": (patching.sweep(circuits, setup, "z"), [a, b]),
        "estimate": (patching.attribution_sweep(circuits, setup, "z"), [a, b]),
        "compare": (compare.lens_diff(circuits, a, b), [a, b]),
        "generate": (generate.generate(circuits, a, generate.Sampling(max_new_tokens=2)), [a]),
        "repeats": (heads.repeat_scores(circuits, n=5, seqs=2), []),
    }
    for what, (result, prompts) in results.items():
        p = result.provenance
        assert p["model"] == "circuits" and str(circuits.info.source) in p["source"], what
        assert p["prompts"] == prompts and p["versions"]["torch"] == torch.__version__, what
        assert p["numeric_mode"] == circuits.info.numeric_mode and isinstance(p["settings"], dict), what
    assert results["sweep"][0].provenance["settings"]["site"] == "z"


def test_a_run_made_under_someone_elses_hooks_never_enters_the_shared_cache(circuits):
    prompt = "apple river stone cloud tiger apple river"
    circuits.run_cache.clear()

    def ablate(z, hook):
        return torch.zeros_like(z)

    with circuits.bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_z", ablate)]):
        edited = runs.run_prompt(circuits, prompt)
    assert len(circuits.run_cache) == 0
    plain = runs.run_prompt(circuits, prompt)
    ids = runs.encode(circuits, prompt)[0][None]
    assert torch.allclose(plain.logits, runs.run_tokens(circuits, ids)[0][0], atol=1e-6)
    assert not torch.allclose(plain.logits, edited.logits, atol=1e-3)
