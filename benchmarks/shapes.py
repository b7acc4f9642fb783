"""Real model shapes with random weights, written to a folder with the English model's tokenizer.

Nothing is downloaded: each shape is a `transformers` config of a published model's size (layers,
width, heads, key/value heads, MLP width, vocabulary), its weights drawn at the usual 0.02 scale.
The page and large-shape benchmarks load them as a user would load a local folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.model import MODELS_DIR

TOKENIZER = MODELS_DIR / "english"


def _config(shape: str):
    from transformers import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig

    common = dict(bos_token_id=0, eos_token_id=0, pad_token_id=None, initializer_range=0.02)
    if shape == "gpt2-small":  # 124 M parameters
        return GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257, **common)
    if shape == "pythia-410m":  # 405 M
        return GPTNeoXConfig(
            num_hidden_layers=24, num_attention_heads=16, hidden_size=1024, intermediate_size=4096, max_position_embeddings=2048,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False, vocab_size=50304, **common,
        )  # fmt: skip
    if shape == "llama-3.2-1b":  # 1.24 B, tied embeddings, grouped-query attention 32/8
        return LlamaConfig(
            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, hidden_size=2048, intermediate_size=8192,
            max_position_embeddings=131072, tie_word_embeddings=True, vocab_size=128256, rope_theta=500000.0, **common,
        )  # fmt: skip
    if shape == "gemma-2-2b":  # 2.6 B, head_dim 256, soft-capped logits, tied
        return Gemma2Config(
            num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, hidden_size=2304, head_dim=256,
            intermediate_size=9216, max_position_embeddings=8192, vocab_size=256000, **common,
        )  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


SHAPES = ("gpt2-small", "pythia-410m", "llama-3.2-1b", "gemma-2-2b")


def build(shape: str, folder: Path, dtype: str = "float32", seed: int = 0) -> Path:
    """Writes a random-weight model of `shape` (stored in `dtype`) and the English tokenizer to `folder`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _config(shape)
    torch.manual_seed(seed)
    # built directly in the stored dtype: a 2.6 B model in float32 would take 10 GB of this shared machine's RAM
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=getattr(torch, dtype))
    folder = Path(folder)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(folder)
    del model
    return folder
