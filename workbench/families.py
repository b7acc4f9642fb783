"""Random-weight models of every architecture family the workbench supports, built from `transformers` configs.

Nothing is downloaded: each family's config class builds a model with random weights, saved with
a shipped model's tokenizer: by default the English model's byte-level BPE, which transformers
also accepts for the families whose tokenizer class it forces (Qwen2); the circuits model's 97
words keep any prompt of those words at its word count (the benchmarks use it). Tests compare every view on these against plain `transformers`; the benchmarks time
patching on larger shapes; a user can try a view on an architecture before fetching real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.model import MODELS_DIR

TOKENIZER = MODELS_DIR / "english"


def _configs(
    layers: int, width: int, heads: int, kv_heads: int, mlp: int, positions: int, vocab: int, init: float = 0.3
) -> dict[str, object]:
    """config per family, all of one size; each family's own quirks switched on."""
    from transformers import (
        GemmaConfig,
        GPT2Config,
        GPTJConfig,
        GPTNeoXConfig,
        LlamaConfig,
        OPTConfig,
        PhiConfig,
        Qwen2Config,
    )

    d_head = width // heads
    # weights larger than the usual 0.02: a random model whose logits differ between prompts by
    # more than float noise, so that patching and attribution have something to measure
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=None, initializer_range=init)
    return {
        "gpt2": GPT2Config(
            n_layer=layers, n_head=heads, n_embd=width, n_inner=mlp, n_positions=positions,
            scale_attn_by_inverse_layer_idx=True, **common,
        ),
        "gpt_neox": GPTNeoXConfig(  # Pythia: partial rotary, parallel attention and MLP
            num_hidden_layers=layers, num_attention_heads=heads, hidden_size=width, intermediate_size=mlp,
            max_position_embeddings=positions, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False, **common,
        ),
        "llama": LlamaConfig(  # RMSNorm, rotary, grouped-query attention, SwiGLU, no biases
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=width,
            intermediate_size=mlp, max_position_embeddings=positions, tie_word_embeddings=False, **common,
        ),
        "qwen2": Qwen2Config(  # Llama with q/k/v biases
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=width,
            intermediate_size=mlp, max_position_embeddings=positions, tie_word_embeddings=False, **common,
        ),
        "gemma": GemmaConfig(  # GeGLU, RMSNorm (1 + w), embeddings scaled by √d_model, tied
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=width,
            head_dim=d_head, intermediate_size=mlp, max_position_embeddings=positions, **common,
        ),
        "phi": PhiConfig(  # one layer norm feeding parallel attention and MLP, partial rotary, biases
            num_hidden_layers=layers, num_attention_heads=heads, hidden_size=width, intermediate_size=mlp,
            max_position_embeddings=positions, partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0, **common,
        ),
        "opt": OPTConfig(  # learned positions offset by 2, ReLU, biases everywhere
            num_hidden_layers=layers, num_attention_heads=heads, hidden_size=width, ffn_dim=mlp, word_embed_proj_dim=width,
            max_position_embeddings=positions, dropout=0.0, **common,
        ),
        "gptj": GPTJConfig(  # interleaved partial rotary, parallel attention and MLP, no attention biases
            n_layer=layers, n_head=heads, n_embd=width, n_inner=mlp, n_positions=positions, rotary_dim=d_head // 2,
            tie_word_embeddings=False, **common,
        ),
    }  # fmt: skip


FAMILIES = tuple(_configs(1, 8, 2, 1, 16, 16, 16))


def build(
    family: str,
    folder: Path,
    layers: int = 2,
    width: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    mlp: int = 64,
    positions: int = 64,
    seed: int = 0,
    tokenizer: Path = TOKENIZER,
    vocab: int | None = None,
    init: float = 0.3,
) -> Path:
    """Writes a random-weight `family` model with `tokenizer` (a shipped model's folder) to `folder`; returns the folder.

    `vocab`: the embedding's rows, at least the tokenizer's size (a real model's vocabulary size, for a benchmark).
    `init`: the weights' standard deviation (0.3 makes a tiny model's logits differ between prompts;
    real models of real width start at 0.02).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = _configs(layers, width, heads, kv_heads, mlp, positions, max(vocab or 0, len(tok)), init)[family]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # random layer-norm gains and biases, so that folding them is tested too
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(init / 3 * torch.randn_like(p))
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_bloom(folder: str | Path) -> Path:
    """A random BLOOM (ALiBi positions) in `folder`: a family transformer-lens wraps but the forward engine does not know.

    The tests use it for the paths that fall back to the bridge's own hooks.
    """
    from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM

    folder = Path(folder)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    config = BloomConfig(
        vocab_size=len(tokenizer), initializer_range=0.3, hidden_size=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    BloomForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
