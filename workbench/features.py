"""Features: what an SAE (workbench/sae.py) reads in a model's residual stream, on a prompt and over held-out text.

- `prompt_features`: every SAE's feature activations at every position of one prompt (the
  token x feature heatmap and a feature's activation across the prompt read it).
- `quality`: the figures the field reports for an SAE, on held-out text: fraction of variance
  explained, next-token loss recovered when the reconstruction replaces the stream (0 = the stream
  zero-ablated, 1 = the model unchanged; through `run_edited` with a `map` edit), L0, dead latents.
- `dashboard_stats`: one pass over held-out text that keeps, per feature, its top activations,
  random samples from lower activation bands, a histogram and its density (a compact file beside
  the SAE, `dashboards.safetensors`; the training command writes it, and a user's SAE gets it
  computed once and cached). `dashboard` turns the stats of one feature into what sae_vis and
  Neuronpedia show: contexts with tokens shaded (re-run from the stated windows), the histogram,
  the logit effect (W_dec[f] @ W_U) and the nearest features by decoder cosine.
- `search`: features by a token (whose top examples sit on it) or by a piece of text (the ones
  most active on it); `intervene`: regenerate with a feature ablated or clamped at chosen positions.

The held-out text is read as the card reads text (train/card.py): BOS + consecutive pieces of
n_ctx - 1 tokens. Position 0 (BOS) is left out everywhere: its residual stream is one constant
vector per site (it attends only to itself), of a much larger norm than any other, and an SAE
would spend latents on it (SAELens's evaluation leaves special tokens out as well).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.generate import Generation, Sampling, generate
from workbench.model import MODELS_DIR, LoadedModel
from workbench.runs import provenance, run_edited, run_prompt, run_tokens
from workbench.sae import SAE
from workbench.tokens import token_labels

HELDOUT_FILES = ("heldout_sample.txt", "heldout_author.txt")  # held-out paragraphs of every source, and of Moby Dick
DASHBOARDS = "dashboards.safetensors"
DASHBOARDS_META = "dashboards.json"
N_TOP = 20  # top-activating examples kept per feature
BANDS = (0.0, 0.25, 0.5, 0.75)  # lower-quantile samples: activation bands as fractions of the feature's max
N_SAMPLES = 5  # samples per band
BINS = 24  # histogram bins over (0, max]
CONTEXT = (12, 4)  # tokens shown before and after an example's token
CHUNK = 16  # windows per forward pass


# ---- text ---------------------------------------------------------------------------------------


def heldout_text(model: LoadedModel) -> tuple[str, str]:
    """(name, text) of the held-out text that dashboards and quality are measured on.

    The model's own held-out samples when its folder has them; the stories model's held-out stories (generated:
    held-out names and phrasings, stories.heldout_stories); otherwise the English model's (English prose that any
    English tokenizer reads: a user's GPT-2 SAE is shown on it)."""
    from workbench.train import stories

    if stories.is_stories_model(model):
        return stories.HELDOUT_NAME, stories.heldout_stories()
    for folder in (Path(model.info.source), MODELS_DIR / "english"):
        if all((folder / f).is_file() for f in HELDOUT_FILES):
            name = " + ".join(f"models/{folder.name}/{f}" if folder.parent == MODELS_DIR else str(folder / f) for f in HELDOUT_FILES)
            return name, "\n\n".join((folder / f).read_text() for f in HELDOUT_FILES)
    raise InputError("no held-out text found: the English model's heldout_*.txt files are missing from models/english")


def windows(model: LoadedModel, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (windows, n_ctx) BOS + consecutive pieces of `text`'s ids, valid (windows, n_ctx) bool: a text token, not BOS or padding)."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_ctx = min(model.info.n_ctx, 256)  # a long context only makes a window slower, not more informative
    width = n_ctx - 1
    pieces = [ids[i : i + width] for i in range(0, len(ids), width)]
    bos = model.bos_id if model.bos_id is not None else (model.tokenizer.eos_token_id or 0)
    rows = torch.full((len(pieces), n_ctx), bos)
    valid = torch.zeros(len(pieces), n_ctx, dtype=torch.bool)
    for i, piece in enumerate(pieces):
        rows[i, 1 : 1 + len(piece)] = torch.tensor(piece)
        valid[i, 1 : 1 + len(piece)] = True
    return rows, valid


def _activations(model: LoadedModel, rows: torch.Tensor, hooks: list[str]):
    """Yields (start row, logits (chunk, pos, d_vocab), {hook: (chunk, pos, d_model)}) over `rows` in chunks."""
    for start in range(0, len(rows), CHUNK):
        logits, cache = run_tokens(model, rows[start : start + CHUNK], names=hooks)
        yield start, logits.float().cpu(), {h: cache[h].float().cpu() for h in hooks}


def text_hash(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


# ---- quality ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Splice:
    """An engine `map` function: the stream replaced by the SAE's reconstruction, BOS (position 0) kept."""

    sae: SAE

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (batch, pos, d_in)
        out = x.clone()
        out[:, 1:] = self.sae(x[:, 1:])
        return out


@dataclass(frozen=True)
class ZeroAblate:
    """An engine `map` function: the stream set to zero, BOS (position 0) kept: loss recovered's 0."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (batch, pos, d_in)
        out = x.clone()
        out[:, 1:] = 0.0
        return out


@dataclass(frozen=True)
class Quality:
    """An SAE's reconstruction on held-out text (BOS excluded)."""

    hook_name: str
    k: int | None  # the TopK k it was measured with
    variance_explained: float  # 1 - Σ|x - x̂|² / Σ|x - mean x|²
    loss_clean: float  # next-token loss, nats per token, model unchanged
    loss_spliced: float  # with the reconstruction in place of the stream
    loss_zero: float  # with the stream zero-ablated
    loss_recovered: float  # (loss_zero - loss_spliced) / (loss_zero - loss_clean)
    l0: float  # mean number of active features per token
    dead: int  # features that never fire on the text
    dead_fraction: float
    tokens: int

    def row(self) -> dict:
        return dataclasses.asdict(self)


@torch.no_grad()
def quality(model: LoadedModel, sae: SAE, text: str, k: int | None = None) -> Quality:
    """The SAE's Quality on `text`; `k` evaluates a TopK SAE with another k (same weights)."""
    if k is not None:
        sae = dataclasses.replace(sae, k=int(k))
    rows, valid = windows(model, text)
    site, layer = sae.site, sae.layer
    splice = [engine.Edit("map", site, layer, fn=Splice(sae))]
    zero = [engine.Edit("map", site, layer, fn=ZeroAblate())]
    err = 0.0  # Σ|x - x̂|²
    x_sum = torch.zeros(sae.d_in, dtype=torch.float64)
    x_sq = 0.0
    n = active = 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    scored = 0
    for start, logits, cache in _activations(model, rows, [sae.hook_name]):
        chunk, keep = rows[start : start + CHUNK], valid[start : start + CHUNK]
        x = sae.flat(cache[sae.hook_name][keep])  # (tokens, d_in), BOS and padding left out (hook_z: heads concatenated)
        a = sae.encode(x)  # (tokens, d_sae)
        err += float(((sae.decode(a, like=x) - x) ** 2).sum())
        x_sum += x.double().sum(0)
        x_sq += float((x.double() ** 2).sum())
        n += len(x)
        active += int((a > 0).sum())
        fired |= (a > 0).any(0)
        targets = keep[:, 1:]  # predicting a text token, from a position before it
        tgt = chunk[:, 1:][targets]
        for name, edits in (("clean", None), ("spliced", splice), ("zero", zero)):
            out = logits if edits is None else run_edited(model, chunk, edits)[0].float().cpu()
            losses[name] += float(torch.nn.functional.cross_entropy(out[:, :-1][targets], tgt, reduction="sum"))
        scored += len(tgt)
    total = x_sq - float((x_sum**2).sum()) / n  # Σ|x - mean|²
    clean, spliced, zeroed = (losses[name] / scored for name in ("clean", "spliced", "zero"))
    dead = int((~fired).sum())
    return Quality(
        hook_name=sae.hook_name,
        k=sae.k,
        variance_explained=1 - err / total,
        loss_clean=clean,
        loss_spliced=spliced,
        loss_zero=zeroed,
        loss_recovered=(zeroed - spliced) / (zeroed - clean),
        l0=active / n,
        dead=dead,
        dead_fraction=dead / sae.d_sae,
        tokens=n,
    )


# ---- dashboards: one pass over held-out text ----------------------------------------------------


@dataclass(frozen=True)
class DashboardStats:
    """Per-feature summaries over the windows of a text; indices are flat: window * n_ctx + position."""

    top_index: torch.Tensor  # (d_sae, N_TOP) int64, -1 where a feature fired fewer times
    top_value: torch.Tensor  # (d_sae, N_TOP) float32, descending
    sample_index: torch.Tensor  # (d_sae, band, N_SAMPLES) int64, -1 where the band is empty
    sample_value: torch.Tensor  # (d_sae, band, N_SAMPLES)
    hist: torch.Tensor  # (d_sae, BINS) int64: counts of the non-zero activations over (0, max]
    max: torch.Tensor  # (d_sae,) largest activation
    fires: torch.Tensor  # (d_sae,) int64: tokens where the feature is active
    tokens: int  # text tokens read (BOS and padding left out)
    n_ctx: int  # window length
    text: str  # the text's name (files)
    text_hash: str  # of the windows' token ids: the stats belong to exactly these tokens

    @property
    def density(self) -> torch.Tensor:
        """(d_sae,) the fraction of tokens where each feature is active."""
        return self.fires.double() / max(self.tokens, 1)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {
            f.name: getattr(self, f.name).contiguous() for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)
        }
        # int32 and float16 on disk: a few hundred kB per SAE
        packed = {n: (t.to(torch.int32) if t.dtype == torch.int64 else t.half()) for n, t in tensors.items()}
        save_file(packed, str(folder / DASHBOARDS))
        meta = {"tokens": self.tokens, "n_ctx": self.n_ctx, "text": self.text, "text_hash": self.text_hash, "n_top": N_TOP,
                "bands": list(BANDS), "samples": N_SAMPLES, "bins": BINS}  # fmt: skip
        (folder / DASHBOARDS_META).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> DashboardStats | None:
        from safetensors.torch import load_file

        if not (folder / DASHBOARDS).is_file() or not (folder / DASHBOARDS_META).is_file():
            return None
        meta = json.loads((folder / DASHBOARDS_META).read_text())
        t = {n: (v.long() if v.dtype == torch.int32 else v.float()) for n, v in load_file(str(folder / DASHBOARDS)).items()}
        return cls(**t, tokens=meta["tokens"], n_ctx=meta["n_ctx"], text=meta["text"], text_hash=meta["text_hash"])


@torch.no_grad()
def dashboard_stats(model: LoadedModel, sae: SAE, text: str, name: str, seed: int = 0) -> DashboardStats:
    """Two passes over `text`'s windows: the top activations, max and counts; then histograms and band samples.

    Band samples are drawn at random (a seeded key per token; the smallest keys in each band)."""
    rows, valid = windows(model, text)
    n_ctx = rows.shape[1]
    d = sae.d_sae
    top_v = torch.full((N_TOP, d), -1.0)
    top_i = torch.full((N_TOP, d), -1, dtype=torch.int64)
    fires = torch.zeros(d, dtype=torch.int64)
    tokens = int(valid.sum())

    def encoded():
        for start, _, cache in _activations(model, rows, [sae.hook_name]):
            keep = valid[start : start + CHUNK]
            flat = (torch.arange(start, start + len(keep))[:, None] * n_ctx + torch.arange(n_ctx))[keep]  # (tokens,)
            x = cache[sae.hook_name][keep]  # (tokens, d_in)
            piece = max(1, 2**24 // d)  # a wide SAE (GPT-2's: 24,576) is read a few hundred tokens at a time
            for i in range(0, len(x), piece):
                yield flat[i : i + piece], sae.encode(x[i : i + piece])  # (tokens, d_sae)

    for flat, a in encoded():
        fires += (a > 0).sum(0)
        both_v = torch.cat([top_v, a])  # (N_TOP + tokens, d_sae)
        both_i = torch.cat([top_i, flat[:, None].expand_as(a)])
        best = both_v.topk(N_TOP, dim=0)  # ties: the first (earlier) index wins, as topk is stable on CPU
        top_v, top_i = best.values, both_i.gather(0, best.indices)
    top_i[top_v <= 0] = -1
    top_v = top_v.clamp(min=0)
    peak = top_v[0].clamp(min=1e-12)  # (d_sae,)
    hist = torch.zeros(d, BINS, dtype=torch.int64)
    edges = torch.tensor([*BANDS, 1.0])
    gen = torch.Generator().manual_seed(seed)
    key_v = torch.full((len(BANDS), N_SAMPLES, d), float("inf"))  # smallest random keys so far, per band
    key_i = torch.full((len(BANDS), N_SAMPLES, d), -1, dtype=torch.int64)
    key_a = torch.zeros(len(BANDS), N_SAMPLES, d)
    for flat, a in encoded():
        frac = a / peak  # (tokens, d_sae) in [0, 1]
        on = a > 0
        b = (frac * BINS).ceil().clamp(1, BINS).long() - 1
        cell = (torch.arange(d) * BINS + b)[on]  # (active,) flat (feature, bin) of each active token
        hist.view(-1).index_add_(0, cell, torch.ones_like(cell))
        keys = torch.rand(a.shape, generator=gen)  # (tokens, d_sae)
        for j in range(len(BANDS)):
            inside = on & (frac > edges[j]) & (frac <= edges[j + 1]) if j else on & (frac <= edges[1])
            k_ = torch.where(inside, keys, torch.full_like(keys, float("inf")))
            cand_k = torch.cat([key_v[j], k_])
            cand_i = torch.cat([key_i[j], flat[:, None].expand_as(a)])
            cand_a = torch.cat([key_a[j], a])
            pick = cand_k.topk(N_SAMPLES, dim=0, largest=False).indices
            key_v[j], key_i[j], key_a[j] = cand_k.gather(0, pick), cand_i.gather(0, pick), cand_a.gather(0, pick)
    key_i[key_v == float("inf")] = -1
    return DashboardStats(
        top_index=top_i.T.contiguous(),
        top_value=top_v.T.contiguous(),
        sample_index=key_i.permute(2, 0, 1).contiguous(),
        sample_value=key_a.permute(2, 0, 1).contiguous() * (key_i.permute(2, 0, 1) >= 0),
        hist=hist,
        max=top_v[0].clone(),
        fires=fires,
        tokens=tokens,
        n_ctx=n_ctx,
        text=name,
        text_hash=text_hash(rows),
    )


CACHE_DIR = Path.home() / ".cache" / "workbench-features"  # dashboards of SAEs whose own folder is read-only


def stats_for(model: LoadedModel, sae: SAE, folder: str | Path | None = None) -> DashboardStats:
    """The SAE's dashboard stats: from its folder when they match the held-out text, else computed once and cached.

    Cached beside the SAE when its folder is writable, else under ~/.cache/workbench-features."""
    name, text = heldout_text(model)
    rows, _ = windows(model, text)
    digest = text_hash(rows)
    key = (sae.hook_name, id(sae))
    if key in model.state.dashboards:
        return model.state.dashboards[key]
    places = [Path(folder)] if folder else []
    weights_id = hashlib.sha256(sae.W_enc[:, :64].numpy().tobytes()).hexdigest()[:12]
    places.append(CACHE_DIR / f"{safe(model.info.name)}-{safe(sae.hook_name)}-{weights_id}")
    stats = None
    for place in places:
        found = DashboardStats.load(place)
        if found is not None and found.text_hash == digest and found.top_index.shape[0] == sae.d_sae:
            stats = found
            break
    if stats is None:
        stats = dashboard_stats(model, sae, text, name)
        for place in places:
            try:
                place.mkdir(parents=True, exist_ok=True)
                stats.save(place)
                break
            except OSError:
                continue
    model.state.dashboards[key] = stats
    return stats


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---- a prompt's features ------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFeatures:
    """Every SAE's feature activations on one prompt."""

    tokens: torch.Tensor  # (pos,) BOS first
    labels: list[str]  # (pos,)
    acts: dict[str, torch.Tensor]  # hook name -> (pos, d_sae) activations
    provenance: dict = field(default_factory=dict, repr=False)

    def strongest(self, hook: str, per_position: int = 3) -> tuple[list[int], torch.Tensor]:
        """(features, values (pos, features)): the union of each position's `per_position` strongest features (BOS left out), by peak."""
        a = self.acts[hook]  # (pos, d_sae)
        body = a[1:] if len(a) > 1 else a
        top = body.topk(min(per_position, a.shape[1]), dim=-1)
        chosen = sorted({int(f) for f, v in zip(top.indices.flatten(), top.values.flatten(), strict=True) if v > 0})
        chosen.sort(key=lambda f: -float(body[:, f].max()))
        return chosen, a[:, chosen]

    def top_per_position(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """(hooks, values (hook, pos), features (hook, pos)): the strongest feature at each position of each SAE."""
        hooks = list(self.acts)
        best = [self.acts[h].max(-1) for h in hooks]  # each (pos,)
        return hooks, torch.stack([b.values for b in best]), torch.stack([b.indices for b in best])

    def rows(self, hook: str, features: list[int]) -> list[dict]:
        a = self.acts[hook]
        return [{"hook": hook, "feature": f, "position": p, "token": self.labels[p], "activation": round(float(a[p, f]), 5)}
                for f in features for p in range(len(self.labels))]  # fmt: skip


def prompt_features(model: LoadedModel, saes: dict[str, SAE], prompt: str) -> PromptFeatures:
    """PromptFeatures of `prompt` for every SAE in `saes`, read from the prompt's (cached) run."""
    run = run_prompt(model, prompt, names=tuple(dict.fromkeys(s.hook_name for s in saes.values())))  # a user's SAE is named by its folder
    with torch.no_grad():
        # run[hook]: (pos, d_model), or a hook_z SAE's (pos, head, d_head) -> (pos, d_sae)
        acts = {h: s.encode(run[s.hook_name].float()) for h, s in saes.items()}
    return PromptFeatures(run.tokens, run.labels, acts, provenance(model, [prompt], method="SAE features", hooks=list(saes)))


# ---- one feature's dashboard --------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One held-out position where the feature is active, with the context around it."""

    index: int  # flat index into the text's windows: window * n_ctx + position
    activation: float  # the feature's activation at the position
    labels: list[str]  # the context's tokens
    acts: list[float]  # the feature's activation at each context token
    focus: int  # which context token is the example's


@dataclass(frozen=True)
class Dashboard:
    """What sae_vis and Neuronpedia show for one feature."""

    hook_name: str
    feature: int
    top: list[Example]  # descending
    bands: dict[str, list[Example]]  # "0.25-0.5 of max" -> samples from that band
    hist_edges: torch.Tensor  # (BINS + 1,) activation values
    hist: torch.Tensor  # (BINS,) counts of the non-zero activations
    density: float  # fraction of the text's tokens where the feature is active
    max: float
    promoted: list[tuple[str, float]]  # tokens W_dec[f] @ W_U raises most, with the logit effect
    suppressed: list[tuple[str, float]]  # and lowers most
    nearest: list[tuple[int, float]]  # features with the most similar decoder rows, cosine
    text: str  # the held-out text it was measured on
    tokens: int

    def rows(self) -> list[dict]:
        out = [{"kind": "top", "rank": i, "activation": e.activation, "context": "".join(e.labels), "token": e.labels[e.focus]}
               for i, e in enumerate(self.top)]  # fmt: skip
        for band, ex in self.bands.items():
            out += [{"kind": band, "rank": i, "activation": e.activation, "context": "".join(e.labels), "token": e.labels[e.focus]}
                    for i, e in enumerate(ex)]  # fmt: skip
        return out


def logit_effect(
    model: LoadedModel, sae: SAE, feature: int, n: int = 10, effect: torch.Tensor | None = None
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(promoted, suppressed): the tokens whose logits W_dec[f] @ W_U raises and lowers most (the direct path through the unembedding).

    `effect` (d_vocab,): W_dec[f] @ W_U when the caller computed it for many features at once."""
    if effect is None:
        effect = sae.W_dec[feature].float() @ engine.readout_of(model).W_U  # (d_vocab,)
    up, down = effect.topk(n), (-effect).topk(n)
    labels = token_labels(model.tokenizer, [*up.indices.tolist(), *down.indices.tolist()])
    return (
        [(lab, float(v)) for lab, v in zip(labels[:n], up.values, strict=True)],
        [(lab, -float(v)) for lab, v in zip(labels[n:], down.values, strict=True)],
    )


def nearest(sae: SAE, feature: int, n: int = 8) -> list[tuple[int, float]]:
    """The `n` features whose decoder rows have the largest cosine with feature's, with the cosine."""
    W = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)  # (d_sae, d_in)
    cos = W @ W[feature]  # (d_sae,)
    cos[feature] = -2.0
    top = cos.topk(min(n, sae.d_sae - 1))
    return [(int(i), float(v)) for i, v in zip(top.indices, top.values, strict=True)]


def _picks(stats: DashboardStats, f: int) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """(top, bands) of feature f as (flat index, activation) pairs, from the stats."""
    top = [(int(i), float(v)) for i, v in zip(stats.top_index[f], stats.top_value[f], strict=True) if i >= 0]
    bands = {}
    for j, lo in enumerate(BANDS):
        hi = BANDS[j + 1] if j + 1 < len(BANDS) else 1.0
        picks = [(int(i), float(v)) for i, v in zip(stats.sample_index[f, j], stats.sample_value[f, j], strict=True) if i >= 0]
        bands[f"{lo:g}–{hi:g} of max"] = sorted(picks, key=lambda t: -t[1])
    return top, bands


@torch.no_grad()
def dashboards(model: LoadedModel, sae: SAE, stats: DashboardStats, feature_list: list[int] | None = None) -> list[Dashboard]:
    """The Dashboards of `feature_list` (None: every feature), their contexts re-run from the stated windows.

    Each window the examples sit in runs once for all the features (one pass over the text at most)."""
    fs = list(range(sae.d_sae)) if feature_list is None else [sae.check_feature(f) for f in feature_list]
    _, text = heldout_text(model)
    rows, valid = windows(model, text)
    if text_hash(rows) != stats.text_hash:
        raise InputError("these dashboard stats were computed on another text than the held-out text found now; recompute them")
    n_ctx = rows.shape[1]
    picks = {f: _picks(stats, f) for f in fs}
    wanted: dict[int, list[tuple[int, int]]] = {}  # window -> [(feature, flat index)]
    for f, (top, bands) in picks.items():
        for index, _ in top + [p for ps in bands.values() for p in ps]:
            wanted.setdefault(index // n_ctx, []).append((f, index))
    order = sorted(wanted)
    labels = {}  # window -> its tokens' labels, made once
    examples: dict[tuple[int, int], Example] = {}
    before, after = CONTEXT
    for start in range(0, len(order), CHUNK):
        ws = order[start : start + CHUNK]
        _, cache = run_tokens(model, rows[ws], names=[sae.hook_name])
        x = cache[sae.hook_name].float().cpu()  # (chunk, n_ctx, d_in)
        for j, w in enumerate(ws):
            need = sorted({f for f, _ in wanted[w]})
            a = sae.encode(x[j])[:, need]  # (n_ctx, needed features)
            column = {f: c for c, f in enumerate(need)}
            labels[w] = token_labels(model.tokenizer, rows[w].tolist())
            end = int(valid[w].sum()) + 1
            for f, index in wanted[w]:
                p = index % n_ctx
                lo, hi = max(1, p - before), min(end, p + after + 1)
                value = float(a[p, column[f]])
                examples[(f, index)] = Example(index, value, labels[w][lo:hi], a[lo:hi, column[f]].tolist(), p - lo)
    W_U = engine.readout_of(model).W_U  # (d_model, d_vocab)
    out = []
    for start in range(0, len(fs), 256):  # the logit effects of 256 features at a time: (256, d_vocab)
        block = fs[start : start + 256]
        effects = sae.W_dec[block].float() @ W_U
        out += [_dashboard(model, sae, stats, f, picks[f], examples, effects[i]) for i, f in enumerate(block)]
    return out


def _dashboard(model, sae: SAE, stats: DashboardStats, f: int, picks, examples: dict, effect: torch.Tensor) -> Dashboard:
    top, bands = picks
    promoted, suppressed = logit_effect(model, sae, f, effect=effect)
    peak = float(stats.max[f])
    return Dashboard(
        hook_name=sae.hook_name,
        feature=f,
        top=[examples[(f, i)] for i, _ in top],
        bands={b: [examples[(f, i)] for i, _ in ps] for b, ps in bands.items()},
        hist_edges=torch.linspace(0, peak, BINS + 1),
        hist=stats.hist[f].clone(),
        density=float(stats.density[f]),
        max=peak,
        promoted=promoted,
        suppressed=suppressed,
        nearest=nearest(sae, f),
        text=stats.text,
        tokens=stats.tokens,
    )


def dashboard(model: LoadedModel, sae: SAE, stats: DashboardStats, feature: int) -> Dashboard:
    """The Dashboard of one feature (see `dashboards`)."""
    return dashboards(model, sae, stats, [feature])[0]


# ---- search -------------------------------------------------------------------------------------


def search(model: LoadedModel, sae: SAE, stats: DashboardStats, query: str, n: int = 12) -> list[dict]:
    """Features for `query`: for one token, those whose top examples sit on it (most first); for longer text, the most active on it."""
    if not isinstance(query, str) or not query.strip():
        raise InputError("type a token or a piece of text to search the features for")
    ids = model.tokenizer(query, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        _, text = heldout_text(model)
        rows, _ = windows(model, text)
        flat = rows.flatten()
        on = (stats.top_index >= 0) & (flat[stats.top_index.clamp(min=0)] == ids[0])  # (d_sae, N_TOP)
        count = on.sum(1)
        order = sorted(range(sae.d_sae), key=lambda f: (-int(count[f]), -float(stats.max[f])))
        return [{"feature": f, "top examples on the token": int(count[f]), "max": round(float(stats.max[f]), 4),
                 "density": round(float(stats.density[f]), 5)} for f in order[:n] if count[f] > 0]  # fmt: skip
    found = prompt_features(model, {sae.hook_name: sae}, query).acts[sae.hook_name][1:]  # (pos, d_sae)
    peak = found.max(0).values  # (d_sae,)
    top = peak.topk(min(n, sae.d_sae))
    return [{"feature": int(f), "peak on the text": round(float(v), 4), "max": round(float(stats.max[f]), 4),
             "density": round(float(stats.density[f]), 5)} for f, v in zip(top.indices, top.values, strict=True) if v > 0]  # fmt: skip


# ---- interventions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intervention:
    """A continuation without and with a feature clamped, the original and the edited run (the Intervene page's words):
    the same sampling, token by token."""

    hook_name: str
    feature: int
    value: float
    positions: list[int] | None  # prompt positions clamped; None: every position, generated ones included
    original: Generation
    edited: Generation
    original_labels: list[str]
    edited_labels: list[str]
    differs: list[bool]  # per step of the longer one: the tokens differ (or one has none)

    def rows(self) -> list[dict]:
        n = len(self.differs)
        pad = [*self.original_labels, *[""] * n][:n], [*self.edited_labels, *[""] * n][:n]
        return [{"step": i, "original": pad[0][i], "edited": pad[1][i], "differs": self.differs[i]} for i in range(n)]


GREEDY = Sampling(max_new_tokens=20)


def intervene(
    model: LoadedModel, sae: SAE, prompt: str, feature: int, value: float = 0.0, positions=None, sampling: Sampling = GREEDY
) -> Intervention:
    """Regenerates `prompt` with `feature` set to `value` (0: ablated) at `positions` (prompt positions; None: everywhere)."""
    f = sae.check_feature(feature)
    if positions is None:
        edits = [sae.clamp_edit(f, value, None)]
    else:
        from workbench.runs import check_position, encode

        n = len(encode(model, prompt)[0])
        positions = sorted({check_position(n, p) for p in positions})
        edits = [sae.clamp_edit(f, value, p) for p in positions]
    original = generate(model, prompt, sampling)
    edited = generate(model, prompt, sampling, edits=edits)
    a = [s.chosen_label for s in original.steps]
    b = [s.chosen_label for s in edited.steps]
    n = max(len(a), len(b))
    differs = [i >= len(a) or i >= len(b) or original.steps[i].chosen_id != edited.steps[i].chosen_id for i in range(n)]
    return Intervention(sae.hook_name, f, float(value), positions, original, edited, a, b, differs)


# ---- the SAEs a view works with, by name (a view's cache is keyed by names, not tensors) ---------


USER = "folder: "  # the name of a user's SAE starts with this, then its folder


def sae_set(model: LoadedModel, folders: tuple[str, ...] = ()) -> dict[str, SAE]:
    """name -> SAE: the model's shipped SAEs (by hook name) and the SAEs in `folders` (SAELens's format), checked to fit the model."""
    from workbench import sae as sae_mod

    out = dict(sae_mod.saes_of(model))
    for folder in folders:
        out[USER + str(folder)] = sae_mod.user_sae(model, folder)
    return out


def folder_of(model: LoadedModel, name: str) -> Path:
    """Where the SAE called `name` lives (its dashboards are cached there when it is writable)."""
    from workbench import sae as sae_mod

    return Path(name[len(USER) :]).expanduser() if name.startswith(USER) else Path(model.info.source) / sae_mod.SAE_FOLDER / name


def pick(model: LoadedModel, name: str, folders: tuple[str, ...] = ()) -> SAE:
    found = sae_set(model, folders)
    if name not in found:
        raise InputError(f"no SAE called {name!r} here; choose one of {', '.join(found) or '(none: open an SAE folder)'}")
    return found[name]


def prompt_features_of(model: LoadedModel, prompt: str, folders: tuple[str, ...] = ()) -> PromptFeatures:
    return prompt_features(model, sae_set(model, folders), prompt)


def stats_of(model: LoadedModel, name: str, folders: tuple[str, ...] = ()) -> DashboardStats:
    return stats_for(model, pick(model, name, folders), folder_of(model, name))


def dashboard_of(model: LoadedModel, name: str, feature: int, folders: tuple[str, ...] = ()) -> Dashboard:
    s = pick(model, name, folders)
    return dashboard(model, s, stats_for(model, s, folder_of(model, name)), feature)


def search_of(model: LoadedModel, name: str, query: str, folders: tuple[str, ...] = ()) -> list[dict]:
    s = pick(model, name, folders)
    return search(model, s, stats_for(model, s, folder_of(model, name)), query)


def intervene_of(model, name, prompt, feature, value, positions, sampling=GREEDY, folders=()) -> Intervention:
    return intervene(model, pick(model, name, folders), prompt, feature, value, None if positions is None else list(positions), sampling)


def card_of(model: LoadedModel) -> dict | None:
    """The shipped SAEs' card (train/sae.py), or None."""
    from workbench import sae as sae_mod

    path = Path(model.info.source) / sae_mod.SAE_FOLDER / "card.json"
    return json.loads(path.read_text()) if path.is_file() else None
