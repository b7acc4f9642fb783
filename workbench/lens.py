"""Logit lens and tuned lens: what the model would predict if it stopped after each layer.

The residual stream is read at 2·layers + 1 points: before block 0 (the embeddings), then after
each block's attention and after its MLP -- or, without the midpoints, at layers + 1: the
embeddings and each block's output (the classic logit lens). Each point costs an unembedding per
position (on a GPT-2-small shape ~0.3 of a forward pass): the page shows the midpoints by default
only where reading them all is cheap (`default_midpoints`). The logit lens reads each point exactly as the model
reads its last one: the final layer norm, then the unembedding. At the last point this *is* the
model's output. Early layers are often unreadable this way because their residual stream lives in
a different basis; the tuned lens (Belrose et al. 2023) first maps each point through a learned
affine translator (`x + x·A + b`, trained so that its reading matches the final distribution).

For every point and position the result keeps only what a view needs -- the top-k tokens, the
entropy, the KL divergence from the final distribution, and the tracked tokens' logit,
probability and rank -- computed a chunk of positions at a time, so the points × positions ×
vocabulary tensor is never built.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workbench import engine
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import Run, check_token_ids, has_hook, provenance, run_prompt, run_tokens
from workbench.tokens import token_labels

LENS_FILE, LENS_STATS = "tuned_lens.safetensors", "tuned_lens.json"


def lens_points(model: LoadedModel, midpoints: bool = True) -> list[tuple[str, str]]:
    """(label, hook name) of each residual-stream point, in order; the last is the model's final residual.

    The points follow the architecture: a sequential block has a point after its attention
    (resid_mid) and one after its MLP; a parallel block (GPT-NeoX, Phi, GPT-J) adds both at once,
    so it has only the point after it ("L3"). Without `midpoints`, every block has only that one.
    """
    points = [("embed", "blocks.0.hook_resid_pre")]
    for layer in range(model.info.n_layers):
        if midpoints and has_hook(model, f"blocks.{layer}.hook_resid_mid"):
            points += [(f"L{layer} attn", f"blocks.{layer}.hook_resid_mid"), (f"L{layer} mlp", f"blocks.{layer}.hook_resid_post")]
        else:
            points.append((f"L{layer}", f"blocks.{layer}.hook_resid_post"))
    return points


POINTS = ("blocks", "midpoints")  # which points a view reads: each block's output, or after each attention and MLP too
MIDPOINTS_SHARE = 0.25  # the midpoints are on by default while reading every point costs at most this share of cost.BUDGET_S


def reading_seconds(model: LoadedModel, n_tokens: int, midpoints: bool = True) -> float:
    """Estimated seconds of the lens's readings (final norm and unembedding at every point and position) on this model."""
    from workbench import cost

    flops = 2 * len(lens_points(model, midpoints)) * n_tokens * model.info.d_model * model.info.d_vocab
    return cost.calibrate(model).seconds(flops, calls=0)


def default_midpoints(model: LoadedModel, n_tokens: int) -> bool:
    """Whether a first view shows the attention and MLP midpoints: only where reading 2·layers + 1 points stays cheap.

    On the shipped models it is a few milliseconds; on a GPT-2-small shape at 24 tokens ~1.3 s at the
    reference speed (25 unembeddings of 50,257 columns: 7.8 forward passes), against 0.7 s for the
    block outputs alone.
    """
    from workbench import cost

    return reading_seconds(model, n_tokens, True) <= MIDPOINTS_SHARE * cost.BUDGET_S


def residuals(run: Run, model: LoadedModel, midpoints: bool = True) -> torch.Tensor:
    """(point, pos, d_model) residual stream at every lens point (lens_points)."""
    return torch.stack([run[name] for _, name in lens_points(model, midpoints)]).float()


def readout(model: LoadedModel, resid: torch.Tensor) -> torch.Tensor:
    """(..., d_vocab) logits of residual vectors (..., d_model): the final norm, then the unembedding.

    Written out (not called through the bridge's modules) so that the tuned lens can train through
    it; the final norm is the model's own kind (LayerNorm, RMSNorm, Gemma's 1 + w), see engine.Norm.
    """
    r = engine.readout_of(model)  # read once per model
    logits = r.norm(resid) @ r.W_U  # (..., d_vocab)
    return logits if r.b_U is None else logits + r.b_U


def read_chunks(
    model: LoadedModel, resid: torch.Tensor, chunk: int, tuned: TunedLens | None = None, final: torch.Tensor | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, (point, c, d_vocab) logits) for `chunk` positions at a time of resid (point, pos, d_model).

    The points × positions × vocabulary tensor is never built whole: a long prompt on a large
    vocabulary would not fit. Call it under torch.no_grad() (a generator must not switch the grad
    mode itself: while it is suspended the switch would leak into its caller). `final` (pos, d_vocab):
    the model's own logits, taken as the last point's reading (the last point is the final
    residual, whose reading they are: one unembedding fewer).
    """
    if chunk < 1:
        raise InputError(f"chunk must be positive, got {chunk}")
    for start in range(0, resid.shape[1], chunk):
        x = resid[:, start : start + chunk]  # (point, c, d_model)
        if tuned is not None:
            x = tuned.translate(x)
        if final is None:
            yield start, readout(model, x)
        else:
            yield start, torch.cat([readout(model, x[:-1]), final[None, start : start + chunk].float()])


def no_grad_chunks(chunks: Iterator) -> Iterator:
    """Each item of `chunks`, computed with gradients off."""
    while True:
        with torch.no_grad():
            item = next(chunks, None)
        if item is None:
            return
        yield item


@dataclass
class TunedLens:
    """Affine translators, one per lens point but the last: x -> x + x·A[i] + b[i]."""

    A: torch.Tensor  # (point-1, d_model, d_model)
    b: torch.Tensor  # (point-1, d_model)
    stats: dict = field(default_factory=dict)  # how it was trained and how well it reads

    @classmethod
    def identity(cls, n_points: int, d_model: int) -> TunedLens:
        return cls(torch.zeros(n_points - 1, d_model, d_model), torch.zeros(n_points - 1, d_model))

    def at(self, model: LoadedModel, points: list[tuple[str, str]]) -> TunedLens:
        """The translators of `points` (a subset of every lens point, ending at the final residual, which has none)."""
        every = [name for _, name in lens_points(model)]
        keep = [every.index(name) for _, name in points[:-1]]
        return TunedLens(self.A[keep], self.b[keep], self.stats)

    def translate(self, resid: torch.Tensor) -> torch.Tensor:
        """(point, ..., d_model) -> same, the last point unchanged."""
        lead = resid[:-1]
        shape = lead.shape
        flat = lead.reshape(shape[0], -1, shape[-1])  # (point-1, rows, d_model)
        moved = flat + torch.bmm(flat, self.A) + self.b[:, None, :]
        return torch.cat([moved.reshape(shape), resid[-1:]])

    def save(self, folder: Path) -> None:
        save_file({"A": self.A.contiguous(), "b": self.b.contiguous()}, folder / LENS_FILE)
        (folder / LENS_STATS).write_text(json.dumps(self.stats, indent=1) + "\n")


def load_tuned_lens(model: LoadedModel) -> TunedLens | None:
    """The tuned lens saved beside the model's weights, or None when it has none."""
    folder = Path(model.info.source)
    if not (folder / LENS_FILE).exists():
        return None
    tensors = load_file(folder / LENS_FILE)
    stats = json.loads((folder / LENS_STATS).read_text()) if (folder / LENS_STATS).exists() else {}
    lens = TunedLens(tensors["A"], tensors["b"], stats)
    if lens.A.shape != (len(lens_points(model)) - 1, model.info.d_model, model.info.d_model):
        raise InputError(f"{folder / LENS_FILE} does not fit this model (translators of shape {tuple(lens.A.shape)}); retrain it")
    return lens


@dataclass(frozen=True)
class LensResult:
    """The lens over every point (rows) and position (columns) of one prompt."""

    kind: str  # "logit lens" or "tuned lens"
    model: str
    prompt: str
    points: list[str]  # (point,)
    labels: list[str]  # (pos,) token labels
    top_ids: torch.Tensor  # (point, pos, k)
    top_labels: list[list[list[str]]]  # (point, pos, k)
    top_probs: torch.Tensor  # (point, pos, k)
    entropy: torch.Tensor  # (point, pos) nats
    kl_to_final: torch.Tensor  # (point, pos) KL(final || point), nats
    tracked_ids: list[int]  # (tracked,)
    tracked_labels: list[str]
    tracked_logits: torch.Tensor  # (point, pos, tracked)
    tracked_probs: torch.Tensor  # (point, pos, tracked)
    tracked_ranks: torch.Tensor  # (point, pos, tracked), 0 = top-1
    provenance: dict = field(default_factory=dict, repr=False)  # model and source, prompt(s), settings, versions (runs.provenance)

    def rows(self) -> list[dict]:
        """CSV rows: one per (point, position), with the top-1 token, entropy and KL."""
        return [
            dict(
                point=pt,
                position=pos,
                token=self.labels[pos],
                top1=self.top_labels[i][pos][0],
                top1_prob=float(self.top_probs[i, pos, 0]),
                entropy=float(self.entropy[i, pos]),
                kl_to_final=float(self.kl_to_final[i, pos]),
            )
            for i, pt in enumerate(self.points)
            for pos in range(len(self.labels))
        ]


def lens(
    model: LoadedModel,
    prompt: str,
    k: int = 5,
    tracked: list[int] = (),
    tuned: TunedLens | None = None,
    truncate: bool = False,
    chunk: int = 32,
    midpoints: bool = True,
    run: Run | None = None,
) -> LensResult:
    """Runs the prompt (cached) and reads every point through the logit lens, or the tuned lens if given.

    `midpoints`: the points after each block's attention too (2·layers + 1 points), or only the
    block outputs (layers + 1). `run`: the prompt's run made elsewhere, holding every point's
    activation (an edited run: the facade's `wb.edits`); None runs the prompt here.
    """
    if not 1 <= k <= 50:
        raise InputError(f"k must be between 1 and 50, got {k}")
    tracked = check_token_ids(model, [int(t) for t in tracked], "tracked token")
    points = lens_points(model, midpoints)
    if tuned is not None and not midpoints:
        tuned = tuned.at(model, points)
    if run is None:
        run = run_prompt(model, prompt, [name for _, name in points], truncate=truncate)
    resid = residuals(run, model, midpoints)  # (point, pos, d_model)
    n_points, pos, _ = resid.shape
    tracked = torch.tensor(tracked, dtype=torch.long)  # (tracked,)
    top_ids, top_probs, entropy, kl, t_logit, t_prob, t_rank = [], [], [], [], [], [], []
    final = run.logits  # (pos, d_vocab) the model's output: the last point's reading
    for _, logits in no_grad_chunks(read_chunks(model, resid, chunk, tuned, final)):  # (point, c, d_vocab)
        logp = logits.log_softmax(-1)
        p = logp.exp()
        top = logp.topk(k, dim=-1)
        top_ids.append(top.indices)
        top_probs.append(top.values.exp())
        entropy.append(-(p * logp).sum(-1))
        final_logp = logp[-1:]  # (1, c, d_vocab)
        kl.append((final_logp.exp() * (final_logp - logp)).sum(-1).clamp_min(0))
        chosen = logits[..., tracked]  # (point, c, tracked)
        t_logit.append(chosen)
        t_prob.append(p[..., tracked])
        t_rank.append((logits[..., None, :] > chosen[..., :, None]).sum(-1))
    top_ids_t = torch.cat(top_ids, 1)
    flat = token_labels(model.tokenizer, top_ids_t.flatten().tolist()) if top_ids_t.numel() else []
    top_labels = [[flat[(i * pos + j) * k : (i * pos + j + 1) * k] for j in range(pos)] for i in range(n_points)]
    return LensResult(
        kind="tuned lens" if tuned is not None else "logit lens",
        model=model.info.name,
        prompt=prompt,
        points=[label for label, _ in points],
        labels=run.labels,
        top_ids=top_ids_t,
        top_labels=top_labels,
        top_probs=torch.cat(top_probs, 1),
        entropy=torch.cat(entropy, 1),
        kl_to_final=torch.cat(kl, 1),
        tracked_ids=tracked.tolist(),
        tracked_labels=token_labels(model.tokenizer, tracked.tolist()),
        tracked_logits=torch.cat(t_logit, 1),
        tracked_probs=torch.cat(t_prob, 1),
        tracked_ranks=torch.cat(t_rank, 1),
        provenance=provenance(
            model, [prompt], view="tuned lens" if tuned is not None else "logit lens", k=k, tracked=tracked.tolist(), truncate=truncate,
            tuned_lens=None if tuned is None else tuned.stats, midpoints=midpoints,
        ),
    )  # fmt: skip


# ---- training the tuned lens ----------------------------------------------------------------------


def collect_residuals(model: LoadedModel, texts: list[str], window: int | None = None) -> torch.Tensor:
    """(point, rows, d_model) residuals of every lens point over BOS-prefixed windows of the texts."""
    window = window or model.info.n_ctx
    names = [name for _, name in lens_points(model)]
    chunks = []
    for text in texts:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        for i in range(0, max(1, len(ids) - 1), window - 1):
            piece = ids[i : i + window - 1]
            if len(piece) < 8:
                continue
            tokens = torch.tensor([model.bos_id, *piece])[None]
            _, cache = run_tokens(model, tokens, names)
            chunks.append(torch.stack([cache[n][0, 1:].float().cpu() for n in names]))  # skip BOS: its row is trivial
    if not chunks:
        raise InputError("the training text is too short for a tuned lens: give at least a few hundred words")
    return torch.cat(chunks, 1)


def train_tuned_lens(
    model: LoadedModel,
    train: torch.Tensor,
    valid: torch.Tensor,
    steps: int = 300,
    lr: float = 3e-4,
    batch: int = 512,
    seed: int = 0,
    log=print,
) -> TunedLens:
    """Fits the translators on residuals (point, rows, d_model) to minimise KL(final || translated reading)."""
    torch.manual_seed(seed)
    n_points, rows, d_model = train.shape
    lens_ = TunedLens.identity(n_points, d_model)
    A = lens_.A.clone().requires_grad_(True)
    b = lens_.b.clone().requires_grad_(True)
    opt = torch.optim.Adam([A, b], lr=lr)
    with torch.no_grad():
        final_train = readout(model, train[-1]).log_softmax(-1)  # (rows, d_vocab)

    def kl_per_point(x: torch.Tensor, final_logp: torch.Tensor, A, b) -> torch.Tensor:
        moved = x[:-1] + torch.bmm(x[:-1], A) + b[:, None, :]
        logp = readout(model, moved).log_softmax(-1)  # (point-1, rows, d_vocab)
        return (final_logp.exp() * (final_logp - logp)).sum(-1).mean(-1)  # (point-1,)

    with torch.no_grad():
        final_valid = readout(model, valid[-1]).log_softmax(-1)
        zero_A, zero_b = torch.zeros_like(A), torch.zeros_like(b)
        kl_logit = kl_per_point(valid, final_valid, zero_A, zero_b)
    # keep, per point, the translator with the lowest validation KL seen (the identity to start with):
    # a translator never reads worse than the logit lens on held-out text
    best_kl, best_A, best_b = kl_logit.clone(), zero_A.clone(), zero_b.clone()
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, rows, (min(batch, rows),), generator=gen)
        loss = kl_per_point(train[:, idx], final_train[idx], A, b).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            with torch.no_grad():
                kl = kl_per_point(valid, final_valid, A, b)
                better = kl < best_kl
                best_kl = torch.where(better, kl, best_kl)
                best_A[better], best_b[better] = A[better].detach(), b[better].detach()
            log(json.dumps({"step": step, "kl_sum": round(loss.item(), 4), "valid_kl": [round(v, 3) for v in best_kl.tolist()]}))
    A, b = best_A, best_b
    kl_tuned = best_kl
    points = [label for label, _ in lens_points(model)]
    stats = {
        "points": points[:-1],
        "valid_kl_logit_lens": [round(v, 4) for v in kl_logit.tolist()],
        "valid_kl_tuned_lens": [round(v, 4) for v in kl_tuned.tolist()],
        "train_rows": rows,
        "valid_rows": int(valid.shape[1]),
        "steps": steps,
        "lr": lr,
        "selection": "per point, the translator with the lowest KL on the validation rows (the identity if none beat it)",
        "seed": seed,
    }
    return TunedLens(A.detach(), b.detach(), stats)
