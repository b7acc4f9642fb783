"""Feature dashboards: what sae_vis and Neuronpedia show for a feature, from one pass over held-out text (sae_quality.py).

- `dashboard_stats`: one pass over held-out text that keeps, per feature, its top activations,
  random samples from lower activation bands, a histogram and its density (a compact file beside
  the SAE, `dashboards.safetensors`; the training command writes it, and a user's SAE gets it
  computed once and cached: `stats_for`).
- `dashboard` turns the stats of one feature into what sae_vis and Neuronpedia show: contexts with
  tokens shaded (re-run from the stated windows), the histogram, the logit effect (W_dec[f] @ W_U)
  and the nearest features by decoder cosine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import run_tokens
from workbench.sae import SAE
from workbench.sae_quality import CHUNK, activations, heldout_text, text_hash, windows
from workbench.tokens import token_labels

DASHBOARDS = "dashboards.safetensors"
DASHBOARDS_META = "dashboards.json"
N_TOP = 20  # top-activating examples kept per feature
BANDS = (0.0, 0.25, 0.5, 0.75)  # lower-quantile samples: activation bands as fractions of the feature's max
N_SAMPLES = 5  # samples per band
BINS = 24  # histogram bins over (0, max]
CONTEXT = (12, 4)  # tokens shown before and after an example's token


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
        for start, _, cache in activations(model, rows, [sae.hook_name]):
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
