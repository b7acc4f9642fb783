"""The circuits model: a small GPT-2 trained to copy, so that it grows induction heads.

Task. Sequences of random words from a 96-word vocabulary (after a BOS token). Half of them hold
one block of 8-55 words repeated, at a random place with random filler before and between the
copies; the other half hold one or two spans (4-24 words) copied from earlier in the sequence, at
places and distances drawn widely. The loss counts only the copied positions after each copy's first word:
those are exactly the tokens that can be predicted, and only by finding the earlier occurrence of
the current word and reading what followed it -- a previous-token head in layer 0 feeding an
induction head in layer 1. Wide distances and random places stop the model from settling on
positional heads: a first version that trained on whole blocks repeated from position 1 learned
to find the seam by position instead (95% right on repeats, induction score 0.05), and one with
short spans only learned too slowly (loss flat for 1,250 steps).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from workbench import heads
from workbench.train import common

EOT = "<|endoftext|>"
UNK = "<unk>"
# 96 short, distinct English words: each is one token (with its leading space).
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "piano",
    "candle",
    "garden",
    "silver",
    "rocket",
    "forest",
    "window",
    "bread",
    "music",
    "honey",
    "planet",
    "spoon",
    "mirror",
    "castle",
    "dragon",
    "pencil",
    "ocean",
    "lemon",
    "violin",
    "basket",
    "thunder",
    "carpet",
    "jungle",
    "marble",
    "rabbit",
    "saddle",
    "tunnel",
    "wallet",
    "yellow",
    "anchor",
    "bottle",
    "cherry",
    "desert",
    "engine",
    "falcon",
    "guitar",
    "hammer",
    "island",
    "jacket",
    "kettle",
    "ladder",
    "meadow",
    "needle",
    "orange",
    "parrot",
    "quartz",
    "ribbon",
    "shadow",
    "ticket",
    "umbrella",
    "velvet",
    "walnut",
    "zebra",
    "badge",
    "cactus",
    "donkey",
    "feather",
    "glacier",
    "harbor",
    "igloo",
    "jewel",
    "koala",
    "lantern",
    "magnet",
    "nickel",
    "oyster",
    "pepper",
    "quilt",
    "rubber",
    "sponge",
    "tomato",
    "vessel",
    "wizard",
    "yogurt",
    "acorn",
    "blanket",
    "cobalt",
    "dolphin",
    "ember",
    "fossil",
    "goblet",
    "hazel",
    "ivory",
    "jigsaw",
    "kernel",
    "lobster",
    "mitten",
    "noodle",
    "orchid",
    "pillow",
    "raven",
]
assert len(WORDS) == 96 and len(set(WORDS)) == 96

CIRCUITS = common.TrainConfig(
    n_layer=2,
    n_head=4,
    n_embd=128,
    n_positions=128,
    vocab_size=len(WORDS) + 2,
    steps=2500,
    batch_size=32,
    lr=2e-3,
    warmup=100,
    weight_decay=0.05,
    log_every=50,
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS; anything else is <unk>. " apple" and "apple" are one token."""
    vocab = {EOT: 0, UNK: 1} | {"Ġ" + w: i + 2 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=UNK, model_max_length=CIRCUITS.n_positions)


def word_ids() -> torch.Tensor:
    return torch.arange(2, 2 + len(WORDS))


SHORT, SHORT_STEPS = 48, 800  # curriculum: the first steps on short sequences, where the circuit forms fast


def batches(cfg: common.TrainConfig, generator: torch.Generator, short_steps: int = SHORT_STEPS):
    """Batches of SHORT tokens for the first `short_steps` steps, then of the whole context.

    Short sequences grow the circuit fast (few positions to search); the sinusoidal start of the
    position embeddings lets the previous-token head carry over to the later positions."""
    for step in itertools.count():
        yield _batch(cfg.batch_size, SHORT if step < short_steps else cfg.n_positions, generator)


def _batch(batch_size: int, n: int, generator: torch.Generator):
    """(batch, n) ids and (batch, n-1) loss mask: random words with copies (see the module doc)."""
    words = word_ids()
    ids = words[torch.randint(0, len(words), (batch_size, n), generator=generator)]
    ids[:, 0] = 0  # BOS
    mask = torch.zeros(batch_size, n - 1, dtype=torch.bool)
    for b in range(batch_size):
        if torch.rand(1, generator=generator).item() < 0.5:
            # one block repeated, at a random place with random filler before and between the copies
            block = int(torch.randint(8, (n - 1) // 2 - 8, (1,), generator=generator))
            spare = n - 1 - 2 * block
            first = 1 + int(torch.randint(0, spare // 2 + 1, (1,), generator=generator))
            second = first + block + int(torch.randint(0, spare - (first - 1) + 1, (1,), generator=generator))
            ids[b, second : second + block] = ids[b, first : first + block]
            mask[b, second : second + block - 1] = True  # targets second+1 .. second+block-1
            continue
        spans = []
        for _ in range(int(torch.randint(1, 3, (1,), generator=generator))):
            length = int(torch.randint(4, min(25, (n - 1) // 2), (1,), generator=generator))
            dst = int(torch.randint(1 + length, n - length + 1, (1,), generator=generator))
            src = int(torch.randint(1, dst - length + 1, (1,), generator=generator))
            ids[b, dst : dst + length] = ids[b, src : src + length]
            spans.append((src, dst, length))
        for src, dst, length in spans:  # a later span may have overwritten an earlier one: keep what still matches
            same = ids[b, dst + 1 : dst + length] == ids[b, src + 1 : src + length]
            same &= ids[b, dst : dst + length - 1] == ids[b, src : src + length - 1]
            mask[b, dst : dst + length - 1] |= same  # targets dst+1 .. dst+length-1
    return ids, mask


@torch.no_grad()
def sinusoidal_positions_(model: GPT2LMHeadModel) -> None:
    """Starts the (still learned) position embeddings as sinusoids of GPT-2's embedding scale.

    A previous-token head needs pos_i·W_QK·pos_(i-1) high at every position; from random position
    embeddings that is learned one position at a time, which took over 1,000 steps at 128 positions.
    Sinusoids make "one back" the same rotation everywhere, so one W_QK serves all positions.
    """
    wpe = model.transformer.wpe.weight  # (n_positions, d_model)
    n, d = wpe.shape
    pos = torch.arange(n)[:, None].float()
    freq = torch.exp(-torch.arange(0, d, 2).float() * (torch.log(torch.tensor(10_000.0)) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    wpe.copy_(table * model.config.initializer_range / table.std())


@torch.no_grad()
def induction_scores(model: GPT2LMHeadModel, n: int, seqs: int = 8, seed: int = 1) -> torch.Tensor:
    """(layer, head) induction scores, averaged over `seqs` repeated sequences of n words."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([heads.repeated_tokens(word_ids(), n, 0, gen) for _ in range(seqs)])
    attn = model(ids, output_attentions=True).attentions  # layers x (batch, head, q, k)
    pattern = torch.stack(attn).mean(1)  # (layer, head, q, k)
    return heads.induction_score(pattern, n)


def build(out: Path, cfg: common.TrainConfig = CIRCUITS, log=print) -> dict:
    tokenizer = make_tokenizer()
    torch.manual_seed(cfg.seed)
    config = common.gpt2_config(cfg, 0, 0)
    config._attn_implementation = "eager"  # the scores read attention weights
    model = GPT2LMHeadModel(config)
    sinusoidal_positions_(model)
    gen = torch.Generator().manual_seed(cfg.seed)

    def evaluate(m):
        return {f"induction_max_n{n}": round(induction_scores(m, n).max().item(), 3) for n in (20, 50)}

    record = common.train(model, batches(cfg, gen), cfg, evaluate, log)
    record["induction_scores"] = {str(n): induction_scores(model, n).tolist() for n in (20, 50)}
    record["task"] = __doc__.split("\n\n")[1].replace("\n", " ")
    common.save(model, tokenizer, out, record)
    return record
