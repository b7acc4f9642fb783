"""TopK SAEs on the residual stream of a shipped model (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

`python -m workbench.train sae [model]` trains one SAE per hook (`SAEConfig.hooks`: the residual
stream before each layer and after the last), measures it on held-out text (sae_quality.quality),
precomputes every feature's dashboard (dashboards.dashboard_stats) and writes, per hook,
models/<model>/sae/<hook_name>/ in SAELens's format (cfg.json + sae_weights.safetensors, with the
measurements in cfg.json) plus dashboards.*, and the card models/<model>/sae/README.md + card.json.

The recipe, as in the paper:
- TopK activation: the k largest pre-activations kept (ReLU'd); L0 is k by construction.
- The AuxK loss revives dead latents: the residual error e = x - x̂ is reconstructed from the top
  `aux_k` pre-activations of the latents that have not fired for `dead_after` tokens, and that
  reconstruction's error joins the loss with weight `aux_coef` (1/32 in the paper).
- The decoder's rows are kept unit-norm (renormalised after every step, with the gradient's
  component along each row removed first); W_enc starts as W_dec's transpose, b_dec at the mean
  of the activations (or their geometric median).
- The loss is the MSE divided by the activations' variance (a fraction of variance unexplained).

Activations are streamed: random BOS-prefixed windows of the training corpus (the model's own
training split, corpus.py) run through the model, all hooks read in one pass, and pass through a
shuffle buffer (`buffer` vectors per hook); no more than that is ever held. BOS (position 0) is
left out (sae_quality.py says why). Deterministic for a seed: the windows and shuffles come from
seeded generators and the thread count is fixed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench import sae_quality
from workbench.dashboards import dashboard_stats
from workbench.model import load_model
from workbench.runs import run_tokens
from workbench.sae import SAE, SAE_FOLDER
from workbench.train import corpus, english


@dataclass(frozen=True)
class SAEConfig:
    """One training run of TopK SAEs on several hooks of a model.

    Width and k were chosen by `search` (sae/search.json, in the card): the smallest k that reaches variance explained
    and loss recovered >= 0.9 (32; k = 16 explains 0.87), and at that k the width that explained the most (512: 0.906,
    1024: 0.902, 2048: 0.897 after the same 200k activations)."""

    hooks: tuple[str, ...] = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")
    width: int = 512  # latents (d_sae)
    k: int = 32  # active latents per token
    tokens: int = 1_000_000  # training activations per SAE
    batch: int = 1024  # activations per step
    lr: float = 3e-3  # Adam, constant after warmup, linear decay over the last fifth
    warmup: int = 50  # steps
    aux_k: int = 64  # AuxK's latents: d_in / 2 in the paper
    aux_coef: float = 1 / 32
    dead_after: int = 200_000  # tokens without firing before a latent counts as dead (for AuxK)
    b_dec_init: str = "mean"  # "mean" or "median" (geometric median, Weiszfeld's iterations)
    windows: int = 64  # corpus windows run per refill of the shuffle buffer
    buffer: int = 65_536  # activations kept per hook, shuffled
    seed: int = 0
    threads: int = 1


CONFIG = SAEConfig()


def geometric_median(x: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """(d,) the point minimising Σ|x_i - m| (Weiszfeld), for x (n, d)."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - m).norm(dim=1).clamp(min=1e-8)  # (n,)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def topk_decode(pre: torch.Tensor, k: int, W_dec: torch.Tensor, b_dec: torch.Tensor):
    """(the k largest pre-activations of each row, their decoding (batch, d)): TopK's activations are those values
    ReLU'd, and decoding reads only the k rows in use, (batch, k, d) instead of a dense (batch, width) @ (width, d)."""
    top = pre.topk(k, dim=-1)
    return top, (top.values.relu()[..., None] * W_dec[top.indices]).sum(1) + b_dec


class Trainer:
    """One TopK SAE being trained: its parameters, optimiser and dead-latent counters."""

    def __init__(self, hook: str, first: torch.Tensor, cfg: SAEConfig, gen: torch.Generator):
        d = first.shape[1]
        self.hook, self.cfg = hook, cfg
        W_dec = torch.randn(cfg.width, d, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        b_dec = geometric_median(first) if cfg.b_dec_init == "median" else first.mean(0)
        self.W_dec = torch.nn.Parameter(W_dec)  # (width, d)
        self.W_enc = torch.nn.Parameter(W_dec.T.clone())  # (d, width)
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.width))
        self.b_dec = torch.nn.Parameter(b_dec)
        self.scale = float(((first - first.mean(0)) ** 2).sum(1).mean())  # the activations' variance: the loss's unit
        self.opt = torch.optim.Adam([self.W_enc, self.b_enc, self.W_dec, self.b_dec], lr=cfg.lr)
        self.since_fired = torch.zeros(cfg.width, dtype=torch.int64)  # tokens since each latent last fired
        self.log: list[dict] = []

    def step(self, x: torch.Tensor, lr: float) -> dict:
        cfg = self.cfg
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc  # (batch, width)
        top, x_hat = topk_decode(pre, cfg.k, self.W_dec, self.b_dec)  # (batch, d)
        mse = ((x_hat - x) ** 2).sum(-1).mean() / self.scale
        return topk_update(self, pre, top, x, x_hat, mse, lr)

    def sae(self, model_name: str) -> SAE:
        return SAE(hook_name=self.hook, **trained(self, model_name))


def trained(trainer, model_name: str) -> dict:
    """What a trained TopK dictionary (an SAE, a transcoder) is saved with: its weights, detached copies, and its k."""
    weights = {name: getattr(trainer, name).detach().clone() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    return {**weights, "activation": "topk", "k": trainer.cfg.k, "meta": {"model_name": model_name}}


def topk_update(trainer, pre: torch.Tensor, top, target: torch.Tensor, recon: torch.Tensor, mse: torch.Tensor, lr: float) -> dict:
    """One optimiser step of a TopK dictionary (an SAE, or a transcoder: `target` is then the MLP's output).

    Adds AuxK's loss (Gao et al. 2024: the latents dead for `dead_after` tokens reconstruct what the
    live ones left), steps, and keeps the decoder's rows unit-norm. `trainer` carries cfg, W_dec,
    opt, scale and since_fired; `pre` (batch, width) are the pre-activations, `top` their top k,
    `recon` (batch, d) the reconstruction of `target`, `mse` its normalised loss. Returns the log row.
    """
    cfg = trainer.cfg
    values = top.values.relu()  # (batch, k)
    trainer.since_fired += len(target)
    trainer.since_fired[top.indices[values > 0]] = 0
    dead = trainer.since_fired >= cfg.dead_after
    aux = torch.zeros(())
    if dead.any():
        e = (target - recon).detach()  # (batch, d): what the live latents left
        pre_dead = pre.masked_fill(~dead, float("-inf"))
        top_dead = pre_dead.topk(min(cfg.aux_k, int(dead.sum())), dim=-1)
        e_hat = (top_dead.values.relu()[..., None] * trainer.W_dec[top_dead.indices]).sum(1)  # (batch, d)
        aux = ((e_hat - e) ** 2).sum(-1).mean() / trainer.scale
    loss = mse + cfg.aux_coef * aux
    trainer.opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():  # keep the decoder's rows unit-norm: no gradient along them, then renormalise
        g = trainer.W_dec.grad
        g -= (g * trainer.W_dec).sum(-1, keepdim=True) * trainer.W_dec
    for group in trainer.opt.param_groups:
        group["lr"] = lr
    trainer.opt.step()
    with torch.no_grad():
        trainer.W_dec /= trainer.W_dec.norm(dim=1, keepdim=True)
    return {"fvu": float(mse.detach()), "aux": float(aux.detach()), "dead": int(dead.sum())}


def activation_stream(model, train_ids: np.ndarray, hooks: tuple[str, ...], cfg: SAEConfig):
    """Endless shuffled batches {hook: (batch, d_model)} of the model's activations on random corpus windows."""
    data = torch.from_numpy(train_ids.astype(np.int64))
    n = model.info.n_ctx
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    buffers = {h: torch.empty(0, model.info.d_model) for h in hooks}
    while True:
        starts = torch.randint(0, len(data) - n, (cfg.windows,), generator=gen)
        ids = torch.stack([data[s : s + n] for s in starts.tolist()])  # (windows, n_ctx)
        ids[:, 0] = model.bos_id  # BOS first, as the model is used
        _, cache = run_tokens(model, ids, names=hooks)
        d = model.info.d_model
        both = {h: torch.cat([buffers[h], cache[h][:, 1:].reshape(-1, d).float().cpu()]) for h in hooks}  # BOS left out
        order = torch.randperm(len(both[hooks[0]]), generator=gen)  # the same shuffle for every hook
        cut = max(0, len(order) - cfg.buffer)
        out = {}
        for h in hooks:
            shuffled = both[h][order]
            out[h], buffers[h] = shuffled[:cut], shuffled[cut:]
        for i in range(cut // cfg.batch):
            yield {h: out[h][i * cfg.batch : (i + 1) * cfg.batch] for h in hooks}


def train(model, train_ids: np.ndarray, cfg: SAEConfig, log=print) -> tuple[dict[str, SAE], dict]:
    """({hook: trained SAE}, {hook: training record}) on the model's activations at cfg.hooks."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    stream = activation_stream(model, train_ids, cfg.hooks, cfg)
    first = next(stream)
    gen = torch.Generator().manual_seed(cfg.seed)
    trainers = {h: Trainer(h, first[h], cfg, gen) for h in cfg.hooks}
    steps = max(1, cfg.tokens // cfg.batch)
    seconds = dict.fromkeys(cfg.hooks, 0.0)
    start = time.process_time()
    batch = first
    for s in range(steps):
        lr = cfg.lr * min(1.0, (s + 1) / cfg.warmup) * min(1.0, (steps - s) / (0.2 * steps))
        for h, t in trainers.items():
            t0 = time.process_time()
            record = t.step(batch[h], lr)
            seconds[h] += time.process_time() - t0
            if s % 100 == 0 or s == steps - 1:
                t.log.append({"step": s, **record})
                log(f"{h} step {s}/{steps}: fvu {record['fvu']:.4f} aux {record['aux']:.4f} dead {record['dead']}")
        batch = next(stream)
    total = time.process_time() - start
    harvest = total - sum(seconds.values())  # the model's runs, shared by every hook
    records = {
        h: {"steps": steps, "tokens": steps * cfg.batch, "cpu_seconds": round(seconds[h] + harvest / len(cfg.hooks), 1), "log": t.log}
        for h, t in trainers.items()
    }
    return {h: t.sae(model.info.name) for h, t in trainers.items()}, records


STORY_TOKENS = 2_000_000  # the stories model's stream: windows are drawn from it at random


def corpus_ids(model, cache: Path) -> np.ndarray:
    """The training split of the corpus (corpus.split_text) in the model's own tokenizer, as one id stream; for the
    stories model, generated training stories (stories.training_ids)."""
    from workbench.train import stories

    if stories.is_stories_model(model):
        return np.asarray(stories.training_ids(model.tokenizer, STORY_TOKENS), dtype=np.int64)
    train_text, _ = corpus.split_text(corpus.documents(corpus.fetch(cache)))
    return english.encode(model.tokenizer, train_text)


KS = (8, 16, 32, 64)  # the L0 vs loss recovered curve: the same weights read with these k


def hooks_of(model) -> tuple[str, ...]:
    """The residual stream before each layer and after the last (CONFIG.hooks for the two-layer English model)."""
    n = model.info.n_layers
    return (*(f"blocks.{i}.hook_resid_pre" for i in range(n)), f"blocks.{n - 1}.hook_resid_post")


def build(model_name: str, cache: Path, cfg: SAEConfig = CONFIG, out: Path | None = None, log=print) -> dict:
    """Trains, measures and writes the SAEs of `model_name` (module doc); returns the card's record."""
    torch.set_num_threads(cfg.threads)
    model = load_model(model_name)
    if cfg.hooks == CONFIG.hooks:  # the default sites: this model's residual stream, layer by layer
        cfg = dataclasses.replace(cfg, hooks=hooks_of(model))
    folder = Path(model.info.source)
    out = out or folder / SAE_FOLDER
    ids = corpus_ids(model, cache)
    log(f"corpus: {len(ids):,} training tokens")
    saes, records = train(model, ids, cfg, log)
    name, text = sae_quality.heldout_text(model)
    card = {"model": model.info.name, "config": dataclasses.asdict(cfg), "heldout_text": name, "hooks": {}}
    for hook, s in saes.items():
        q = sae_quality.quality(model, s, text)
        curve = [sae_quality.quality(model, s, text, k=k).row() for k in KS]
        t0 = time.process_time()
        stats = dashboard_stats(model, s, text, name, seed=cfg.seed)
        dash_seconds = time.process_time() - t0
        rec = {**records[hook], "quality": q.row(), "k_curve": curve, "dashboard_cpu_seconds": round(dash_seconds, 1)}
        sub = s.save(out / hook, training={k: v for k, v in rec.items() if k != "log"}, trained_with=dataclasses.asdict(cfg))
        stats.save(sub)
        (sub / "training_log.json").write_text(json.dumps(records[hook]["log"]) + "\n")
        card["hooks"][hook] = {k: v for k, v in rec.items() if k != "log"}
        log(f"{hook}: FVE {q.variance_explained:.3f}, loss recovered {q.loss_recovered:.3f}, L0 {q.l0:.1f}, dead {q.dead}")
    search_file = out / "search.json"
    if search_file.exists():
        card["search"] = json.loads(search_file.read_text())
    write_card(out, card)
    return card


def search(model_name: str, cache: Path, out: Path, tokens: int = 200_000, log=print) -> dict:
    """The short measured runs that chose width and k: one hook, `tokens` each; written to `out` (search.json)."""
    model = load_model(model_name)
    ids = corpus_ids(model, cache)
    name, text = sae_quality.heldout_text(model)
    hook = "blocks.1.hook_resid_pre"
    runs = []
    for width, k in ((512, 32), (1024, 32), (2048, 32), (1024, 16), (1024, 8)):
        cfg = dataclasses.replace(CONFIG, hooks=(hook,), width=width, k=k, tokens=tokens, dead_after=tokens // 4)
        saes, rec = train(model, ids, cfg, log=lambda *_: None)
        q = sae_quality.quality(model, saes[hook], text)
        runs.append({**q.row(), "width": width, "k": k, "train_tokens": tokens, "cpu_seconds": rec[hook]["cpu_seconds"]})
        log(json.dumps(runs[-1]))
    result = {"hook": hook, "heldout_text": name, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    card_file = out.parent / "card.json"
    if card_file.is_file():  # the shipped SAEs' card shows the search: rewrite it with this one
        write_card(out.parent, {**json.loads(card_file.read_text()), "search": result})
    return result


TARGETS = {"variance_explained": 0.9, "loss_recovered": 0.9, "l0": 32, "dead_fraction": 0.05}


def _table(rows: list[dict], columns: dict[str, str]) -> str:
    head = "| " + " | ".join(columns.values()) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def _fmt(q: dict) -> dict:
    return {
        **q,
        "variance_explained": f"{q['variance_explained']:.3f}",
        "loss_recovered": f"{q['loss_recovered']:.3f}",
        "loss_clean": f"{q['loss_clean']:.3f}",
        "loss_spliced": f"{q['loss_spliced']:.3f}",
        "loss_zero": f"{q['loss_zero']:.3f}",
        "l0": f"{q['l0']:.1f}",
        "dead": f"{q['dead']} ({q['dead_fraction']:.1%})",
    }


QUALITY_COLUMNS = {"hook": "hook", "variance_explained": "variance explained", "loss_recovered": "loss recovered", "l0": "L0",
                   "dead": "dead latents", "loss_clean": "loss, unchanged", "loss_spliced": "loss, reconstructed",
                   "loss_zero": "loss, zero-ablated", "cpu": "training CPU s", "dash": "dashboards CPU s"}  # fmt: skip
CURVE_COLUMNS = {"hook": "hook", "k": "k", "l0": "L0", "variance_explained": "variance explained", "loss_recovered": "loss recovered",
                 "dead": "dead latents"}  # fmt: skip
SEARCH_COLUMNS = {"width": "width", "k": "k", "l0": "L0", "variance_explained": "variance explained", "loss_recovered": "loss recovered",
                  "dead": "dead latents", "cpu_seconds": "CPU s"}  # fmt: skip


TITLES = {"english": "English", "stories": "stories"}


def write_card(out: Path, card: dict) -> None:
    """card.json and README.md in `out` (models/<model>/sae/), every number from `card` (the measurements)."""
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    cfg = card["config"]
    rows = [
        {"hook": f"`{h}`", **_fmt(r["quality"]), "cpu": r["cpu_seconds"], "dash": r["dashboard_cpu_seconds"]}
        for h, r in card["hooks"].items()
    ]
    met = all(
        r["quality"]["variance_explained"] >= TARGETS["variance_explained"]
        and r["quality"]["loss_recovered"] >= TARGETS["loss_recovered"]
        and r["quality"]["l0"] <= TARGETS["l0"]
        and r["quality"]["dead_fraction"] <= TARGETS["dead_fraction"]
        for r in card["hooks"].values()
    )
    lines = [
        f"# SAEs of the {TITLES.get(card.get('model', 'english'), card.get('model'))} model\n\n",
        f"TopK sparse autoencoders (Gao et al. 2024) on the residual stream at {len(card['hooks'])} sites, trained by "
        f"`python -m workbench.train sae {card.get('model', 'english')}` (`workbench/train/sae.py`), in SAELens's format: one folder per hook with "
        "`cfg.json` + `sae_weights.safetensors`, and `dashboards.safetensors` (every feature's top activations, band samples "
        "and histogram on the held-out text). This card is written by that command from its measurements.\n\n",
        f"Width {cfg['width']} latents, k = {cfg['k']}, AuxK with {cfg['aux_k']} latents and weight {cfg['aux_coef']:.4g} "
        f"(dead: no activation in {cfg['dead_after']:,} tokens), decoder rows unit-norm, b_dec initialised at the {cfg['b_dec_init']}; "
        f"{card['hooks'][next(iter(card['hooks']))]['tokens']:,} training activations per SAE from "
        + ("generated training stories, " if card.get("model") == "stories" else "the corpus's training split, ")
        + f"batch {cfg['batch']}, Adam {cfg['lr']:g}; seed {cfg['seed']}, {cfg['threads']} thread(s).\n\n",
        "## Quality on held-out text\n\n",
        f"Text: `{card['heldout_text']}` (BOS left out). Variance explained = 1 - Σ|x - x̂|² / Σ|x - mean x|²; loss recovered = "
        "(loss with the stream zero-ablated - loss with the reconstruction in its place) / (zero-ablated - unchanged), "
        "next-token loss in nats per token; dead = never active on the text. CPU seconds: training (one thread, the model's "
        "runs shared among the SAEs) and the dashboards' precomputation.\n\n",
        _table(rows, QUALITY_COLUMNS),
        "\nTargets (variance explained ≥ 0.9, loss recovered ≥ 0.9, L0 ≤ 32, ≤ 5% dead): "
        + ("met at every site.\n" if met else "**not met at every site** (see the table).\n"),
        "\n## L0 versus loss recovered, over k\n\nThe shipped weights read with another k at inference (a TopK SAE's k can be "
        "changed after training; the rows measure how well that holds here):\n\n",
    ]
    curve = []
    for h, r in card["hooks"].items():
        curve += [{"hook": f"`{h}`", **_fmt(q)} for q in r["k_curve"]]
    lines.append(_table(curve, CURVE_COLUMNS))
    if "search" in card:
        s = card["search"]
        runs = [{**_fmt(r), "cpu_seconds": r["cpu_seconds"]} for r in s["runs"]]
        lines.append(
            f"\n## How width and k were chosen\n\nShort runs (`python -m workbench.train sae-search`, `search.json`) on `{s['hook']}`, "
            f"{s['runs'][0]['train_tokens']:,} training activations each, measured on the same held-out text. Each row is an SAE trained "
            "at that k, so this is also the L0 vs loss recovered curve of SAEs trained for each L0:\n\n" + _table(runs, SEARCH_COLUMNS)
        )
    (out / "README.md").write_text("".join(lines))
