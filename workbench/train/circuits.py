"""The circuits model: a small GPT-2 trained on a copying task, so that it grows induction heads.

Task (copying.py): BOS + random words from a 96-word vocabulary, in which one span is copied after
a gap drawn widely; the loss counts only the copied positions after each copy's first word. Those
tokens can be predicted only by finding the earlier occurrence of the current word and reading
what followed it: a previous-token head in layer 0 feeding an induction head in layer 1.

The recipe is the one measured to work on this machine (../shared/NOTES.md): 2 layers x 4 heads x
128, AdamW at a *constant* 2e-3 (a cosine schedule with fewer steps learned positional copying
instead), first on sequences of 48 words with spans of 4-16 (the phase change comes at ~600
steps), then on the whole 128-token context with spans up to 60, so that the heads work on the
BOS + 50 + 50 test. The model that was written by hand before training got there ships on as
`answer-key` (constructed.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from workbench import heads
from workbench.train import common, copying

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
    steps=2500,  # short stage + long stage
    batch_size=64,
    lr=2e-3,
    warmup=0,
    weight_decay=0.01,
    log_every=50,
)
SHORT, SHORT_STEPS = 49, 1500  # BOS + 48 words: where the circuit forms fast
SNAPSHOTS = (50, 100, 200, 300, 400, 500, 600, 700, 800, 1000, 1250, 1500, 2000, 2500)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS; anything else is <unk>. " apple" and "apple" are one token."""
    vocab = {EOT: 0, UNK: 1} | {"Ġ" + w: i + 2 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=UNK, model_max_length=CIRCUITS.n_positions)


def word_ids() -> torch.Tensor:
    return torch.arange(2, 2 + len(WORDS))


def stages(cfg: common.TrainConfig, short_steps: int = SHORT_STEPS) -> list[common.Stage]:
    """Short sequences with short spans, then the whole context with long ones (module doc)."""
    words = word_ids()

    def short(g):
        return [copying.copy_part(words, cfg.batch_size, SHORT, 0, g, pool_logits=False)]

    def long(g):
        return [copying.copy_part(words, cfg.batch_size // 2, cfg.n_positions, 0, g, pool_logits=False, max_span=60)]

    return [
        common.Stage(f"{SHORT - 1} words, spans 4-16", min(short_steps, cfg.steps), short, cfg.lr),
        common.Stage(f"{cfg.n_positions - 1} words, spans 4-60", max(0, cfg.steps - short_steps), long, cfg.lr),
    ]


def batches(cfg: common.TrainConfig, generator: torch.Generator):
    """Endless batches of the long stage (what the tuned lens is trained on)."""
    while True:
        part = stages(cfg)[1].batch(generator)[0]
        yield part.ids, part.mask


@torch.no_grad()
def induction_scores(model: GPT2LMHeadModel, n: int, seqs: int = 8, seed: int = 1) -> torch.Tensor:
    """(layer, head) induction scores, averaged over `seqs` repeated sequences of n words."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([heads.repeated_tokens(word_ids(), n, 0, gen) for _ in range(seqs)])
    attn = model(ids, output_attentions=True).attentions  # layers x (batch, head, q, k)
    pattern = torch.stack(attn).mean(1)  # (layer, head, q, k)
    return heads.induction_score(pattern, n)


def build(out: Path, cfg: common.TrainConfig = CIRCUITS, run_dir: Path | None = None, snapshots=SNAPSHOTS, log=print) -> dict:
    tokenizer = make_tokenizer()
    torch.manual_seed(cfg.seed)
    config = common.gpt2_config(cfg, 0, 0)
    config._attn_implementation = "eager"  # the scores read attention weights
    model = GPT2LMHeadModel(config)

    def evaluate(m):
        return {f"induction_max_n{n}": round(induction_scores(m, n).max().item(), 3) for n in (20, 50)}

    snapshots = [s for s in snapshots if s <= cfg.steps]
    record = common.run_stages(model, stages(cfg), cfg, run_dir, snapshots, evaluate, eval_every=250, log=log)
    record["induction_scores"] = {str(n): induction_scores(model, n).tolist() for n in (20, 50)}
    record["task"] = __doc__.split("\n\n")[1].replace("\n", " ")
    common.save(model, tokenizer, out, record)
    if run_dir is not None:
        record["checkpoints"] = common.ship_snapshots(run_dir, out)
        common.save(model, tokenizer, out, record)
    return record
