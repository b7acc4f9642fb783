import json
import re
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from workbench import runs
from workbench.errors import InputError
from workbench.model import COMPATIBILITY_MODE, MODELS_DIR, load_model, resolve


@pytest.mark.parametrize("name", ["stories", "english"])
def test_the_default_is_the_stories_model_and_shipped_models_load_as_shipped(name):
    assert resolve(None)[0] == "stories"
    model = load_model(name)
    info = model.info
    assert info.kind == "shipped" and info.compatibility_mode and info.numeric_mode == COMPATIBILITY_MODE
    config = json.loads((MODELS_DIR / name / "config.json").read_text())  # the shipped shape, as the bridge reads it
    assert (info.n_layers, info.n_heads, info.d_model) == (config["n_layer"], config["n_head"], config["n_embd"])
    assert info.d_head == config["n_embd"] // config["n_head"]
    assert info.n_ctx == config["n_positions"] and info.d_vocab == config["vocab_size"] and not info.trust_remote_code
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / name, use_safetensors=True)
    assert info.n_params == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("name", ["english", "circuits"])
def test_logits_equal_plain_transformers(name, shipped):
    if shipped.info.name != name:
        pytest.skip("one model per parametrisation")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(shipped.tokenizer), (3, 40), generator=gen)
    ids[:, 0] = shipped.bos_id
    # the constructed circuits model's hand-set gains amplify float32 rounding in the weight
    # processing (4e-4 on logits of +-10); in float64 both models agree to 1e-4 and far better
    dtypes = ["float32", "float64"] if name == "english" else ["float64"]
    for dtype in dtypes:
        model = shipped if dtype == "float32" else load_model(name, dtype=dtype)
        hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / name, use_safetensors=True, dtype=getattr(torch, dtype)).eval()
        with torch.no_grad():
            ours = model.bridge(ids)
            ref = hf(ids).logits
        assert torch.allclose(ours, ref, atol=1e-4), (dtype, (ours - ref).abs().max())
    if name == "circuits":
        with torch.no_grad():
            assert torch.allclose(
                shipped.bridge(ids), AutoModelForCausalLM.from_pretrained(MODELS_DIR / name).eval()(ids).logits, atol=1e-3
            )


def test_every_hook_fires_with_its_shape(shipped):
    info = shipped.info
    run = runs.run_prompt(
        shipped, "apple river stone apple river" if info.name == "circuits" else "The whale swam.", runs.all_hook_names(shipped)
    )
    pos, L, H, D, Dh, M = run.n_tokens, info.n_layers, info.n_heads, info.d_model, info.d_head, info.d_mlp
    expected = {
        "hook_resid_pre": (pos, D), "hook_resid_mid": (pos, D), "hook_resid_post": (pos, D),
        "hook_attn_out": (pos, D), "hook_mlp_out": (pos, D),
        "attn.hook_q": (pos, H, Dh), "attn.hook_k": (pos, H, Dh), "attn.hook_v": (pos, H, Dh), "attn.hook_z": (pos, H, Dh),
        "attn.hook_attn_scores": (H, pos, pos), "attn.hook_pattern": (H, pos, pos),
        "mlp.hook_pre": (pos, M), "mlp.hook_post": (pos, M),
    }  # fmt: skip
    for layer in range(L):
        for suffix, shape in expected.items():
            assert tuple(run[f"blocks.{layer}.{suffix}"].shape) == shape, suffix
    assert tuple(run["hook_embed"].shape) == (pos, D)
    # the residual stream adds up: pre + attn = mid, mid + mlp = post, post = next pre
    for layer in range(L):
        b = f"blocks.{layer}."
        assert torch.allclose(run[b + "hook_resid_pre"] + run[b + "hook_attn_out"], run[b + "hook_resid_mid"], atol=1e-4)
        assert torch.allclose(run[b + "hook_resid_mid"] + run[b + "hook_mlp_out"], run[b + "hook_resid_post"], atol=1e-4)
        if layer + 1 < L:
            assert torch.equal(run[b + "hook_resid_post"], run[f"blocks.{layer + 1}.hook_resid_pre"])
        # per-head results (hook_z · W_O) add up to the attention output (plus the output bias)
        b_o = shipped.bridge.blocks[layer].attn.b_O.detach()
        assert torch.allclose(runs.head_results(shipped, run, layer).sum(1) + b_o, run[b + "hook_attn_out"], atol=1e-4)
    # attention rows sum to one and never look ahead
    pattern = run.stack("attn.hook_pattern")  # (layer, head, q, k)
    assert torch.allclose(pattern.sum(-1), torch.ones(L, H, pos), atol=1e-5)
    assert pattern.triu(1).abs().max() == 0


def test_patterns_equal_transformers_attention(english):
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "english", use_safetensors=True, attn_implementation="eager").eval()
    run = runs.run_prompt(english, "Emma Woodhouse, handsome, clever, and rich.", runs.hook_names(english, "attn.hook_pattern"))
    with torch.no_grad():
        ref = torch.stack(hf(run.tokens[None], output_attentions=True).attentions)[:, 0]  # (layer, head, q, k)
    assert torch.allclose(run.stack("attn.hook_pattern"), ref, atol=1e-5)


def test_unknown_path_and_hub_name_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="no model folder"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="hf download some-org/not-a-cached-model"):  # offline in the tests (conftest.py)
        load_model("some-org/not-a-cached-model")


def test_folder_without_weights_and_pickle_only_are_refused(tmp_path):
    src = MODELS_DIR / "circuits"
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(InputError, match="no weights"):
        load_model(str(tmp_path))
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match="pickle"):
        load_model(str(tmp_path))


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    src = MODELS_DIR / "circuits"
    for f in src.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="could not load"):
        load_model(str(tmp_path))


def test_a_checkpoint_missing_weights_is_refused_naming_them(tmp_path):
    """transformers would fill the missing tensors with random values and load; the workbench refuses."""
    src = MODELS_DIR / "circuits"
    for f in src.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    save_file({"unrelated": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(InputError, match=r"incomplete: \d+ tensor\(s\) are missing \(.*transformer\.h\.0\."):
        load_model(str(tmp_path))
    # one tensor short of the real weights
    weights = load_file(src / "model.safetensors")
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, tmp_path / "model.safetensors")
    with pytest.raises(InputError, match=f"1 tensor\\(s\\) are missing \\({re.escape(dropped)}\\)"):
        load_model(str(tmp_path))


def test_local_folder_loads(tmp_path):
    model = load_model(str(MODELS_DIR / "circuits"))
    assert model.info.kind == "local folder" and model.info.n_layers == 2


def test_cuda_asked_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="no CUDA GPU"):
        load_model("circuits", device="cuda")


def test_concurrent_runs_never_see_each_others_hooks(circuits):
    """Threads ablating a head and threads running plainly, on one shared model."""
    ids = runs.encode(circuits, "apple river stone cloud apple river stone")[0][None]
    clean = runs.run_tokens(circuits, ids)[0].clone()

    def ablate(z, hook):
        z[:, :, :] = 0.0
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", ablate) for layer in range(2)]
    ablated = runs.run_tokens(circuits, ids, hooks=hooks)[0].clone()
    assert not torch.allclose(clean, ablated)

    errors = []

    def worker(i):
        for _ in range(6):
            if i % 2:
                out = runs.run_tokens(circuits, ids, hooks=hooks)[0]
                if not torch.allclose(out, ablated, atol=1e-5):
                    errors.append("ablated run lost its hook")
            else:
                out = runs.run_tokens(circuits, ids)[0]
                if not torch.allclose(out, clean, atol=1e-5):
                    errors.append("plain run saw another thread's hook")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert circuits.attached_hooks() == []


def test_compatibility_mode_frees_gpt2s_fused_qkv_and_still_equals_plain_transformers(tmp_path):
    """The fused QKV weight the processing leaves unused is released (an empty tensor); logits, every attention hook and
    W_Q/K/V still equal plain transformers' numbers and those read from its c_attn."""
    from workbench import families

    folder = families.build("gpt2", tmp_path / "gpt2")
    model = load_model(str(folder))
    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    for block in model.bridge.blocks:
        assert block.attn.qkv.original_component.weight.numel() == 0
    ids = runs.encode(model, "The cat sat on the mat. The cat sat on the")[0][None]
    with torch.no_grad():
        want = plain(ids, output_attentions=True)
    logits, cache = runs.run_tokens(model, ids, [f"blocks.{i}.attn.hook_pattern" for i in range(model.info.n_layers)])
    assert torch.allclose(logits, want.logits, atol=1e-4)
    for i, pattern in enumerate(want.attentions):
        assert torch.allclose(cache[f"blocks.{i}.attn.hook_pattern"], pattern, atol=1e-5)


def test_head_constants_do_not_keep_a_second_copy_of_the_model(tmp_path):
    """The raw twin read for the head constants is loaded for them alone (conventions.raw_twin(keep=False)); the values
    equal those read with a kept twin."""
    import shutil

    from workbench import conventions

    shutil.copytree(MODELS_DIR / "circuits", tmp_path / "circuits", ignore=shutil.ignore_patterns("checkpoints", "sae"))
    model = load_model(str(tmp_path / "circuits"))
    once = conventions.head_constants(model)
    assert model.state.raw_twin is None
    model.state.head_constants = None
    conventions.raw_twin(model)  # a kept twin (the tuned-lens package readings keep one) is reused
    assert torch.equal(conventions.head_constants(model), once) and model.state.raw_twin is not None
