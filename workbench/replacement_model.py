"""The attribution graph's replacement model: the real run frozen, and the linear model it makes of the transcoders.

Every MLP is replaced by its transcoder (workbench/transcoder.py), and what the transcoder misses
at each (layer, position), the real MLP output minus the transcoder's, is kept as an error node, so
the replacement reproduces the real run exactly. Freezing the attention patterns and the norms'
scales (each position's standard deviation or RMS, read from the real run: `freeze`) makes
everything between the transcoders' features linear (`Linear`): the graph's edges are gradients of
that model, one backward pass per batch of targets (`edge_rows`; attribution_graph.build assembles
them), and the graph's checks run it with features clamped (attribution_graph_checks.py). Its
targets are features' pre-activations and the last position's readouts (`Linear.readouts`): the
logits, and the final norm's share and normalised stream, which let the checks put the final norm's
divisor back in the prediction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.transcoder import Transcoder, capture_names, mlp_io


@dataclass(frozen=True)
class Frozen:
    """What the replacement model takes from the real run: the residual stream, patterns and the norms' scales."""

    w: engine.Weights
    tokens: torch.Tensor  # (pos,)
    emb: torch.Tensor  # (pos, d_model) token + position embedding: the token nodes
    resid_pre: list[torch.Tensor]  # per layer (pos, d_model)
    resid_mid: list[torch.Tensor | None]  # per layer (pos, d_model); None in parallel blocks
    patterns: list[torch.Tensor]  # per layer (head, query, key)
    mlp_in: list[torch.Tensor]  # per layer (pos, d_model)
    mlp_out: list[torch.Tensor]  # per layer (pos, d_model)
    final: torch.Tensor  # (pos, d_model) the residual stream after the last block
    logits: torch.Tensor  # (d_vocab,) at the last position

    @property
    def n_pos(self) -> int:
        return len(self.tokens)


def freeze(w: engine.Weights, tokens: torch.Tensor) -> Frozen:
    """The real run of `tokens` (pos,) through the forward engine, with what the graph freezes."""
    names = capture_names(w)
    with torch.no_grad():
        out = engine.forward(w, tokens[None], capture=names)
        c = {n: a[0] for n, a in out.captured.items()}
        emb = engine.embed(w, tokens[None])[0]
    L = w.n_layers
    io = [mlp_io(w, {n: a[None] for n, a in c.items()}, layer) for layer in range(L)]
    return Frozen(
        w=w,
        tokens=tokens,
        emb=emb,
        resid_pre=[c[f"blocks.{layer}.hook_resid_pre"] for layer in range(L)],
        resid_mid=[c.get(f"blocks.{layer}.hook_resid_mid") for layer in range(L)],
        patterns=[c[f"blocks.{layer}.attn.hook_pattern"] for layer in range(L)],
        mlp_in=[i[0][0] for i in io],
        mlp_out=[i[1][0] for i in io],
        final=c[f"blocks.{L - 1}.hook_resid_post"],
        logits=out.logits[0, -1],
    )


def norm_scale(norm: engine.Norm, real: torch.Tensor) -> torch.Tensor:
    """(pos, 1) the norm's divisor on the real run: frozen, it makes the norm linear."""
    if norm.kind == "layer":
        return (real.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return (real.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()


def frozen_norm(norm: engine.Norm, scale: torch.Tensor, x: torch.Tensor, bias: bool) -> torch.Tensor:
    """The norm with its scale frozen: linear in x (B, pos, d), plus its bias when `bias`."""
    if norm.kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    y = x / scale
    if norm.weight is not None:
        y = y * (norm.offset + norm.weight)
    if bias and norm.kind == "layer" and norm.bias is not None:
        y = y + norm.bias
    return y


@dataclass(frozen=True)
class Linear:
    """The frozen replacement model: norms' scales, patterns and the transcoders; runs (B, pos, d_model) streams."""

    fz: Frozen
    tcs: dict[int, Transcoder]
    s1: list[torch.Tensor] = field(default_factory=list)  # per layer (pos, 1)
    s2: list[torch.Tensor] = field(default_factory=list)
    sf: torch.Tensor | None = None

    @classmethod
    def of(cls, fz: Frozen, tcs: dict[int, Transcoder]) -> Linear:
        w = fz.w
        s1 = [norm_scale(w.layers[i].ln1, fz.resid_pre[i]) for i in range(w.n_layers)]
        s2 = []
        for i, L in enumerate(w.layers):
            if w.parallel:
                s2.append(s1[i] if L.ln2 is None else norm_scale(L.ln2, fz.resid_pre[i]))
            else:
                s2.append(norm_scale(L.ln2, fz.resid_mid[i]))
        return cls(fz, tcs, s1, s2, norm_scale(w.ln_final, fz.final))

    def prefix(self, n: int) -> Linear:
        """The same model on the first n positions only: by causality they do not depend on later ones."""
        if n >= self.fz.n_pos:
            return self
        fz = dataclasses.replace(self.fz, patterns=[p[:, :n, :n] for p in self.fz.patterns])
        return Linear(fz, self.tcs, [x[:n] for x in self.s1], [x[:n] for x in self.s2], self.sf)

    def attention(self, layer: int, x: torch.Tensor, bias: bool) -> torch.Tensor:
        """(B, pos, d_model) -> (B, pos, d_model): the attention's output with its pattern frozen."""
        w = self.fz.w
        L, H, K, E = w.layers[layer], w.n_heads, w.n_kv_heads, w.d_head
        h = frozen_norm(L.ln1, self.s1[layer], x, bias)
        v = h @ L.W_qkv[:, (H + K) * E :]  # (B, pos, K * E): values are not rotated
        if bias and L.b_qkv is not None:
            v = v + L.b_qkv[(H + K) * E :]
        v = v.reshape(*v.shape[:2], K, E)
        if K != H:
            v = v.repeat_interleave(H // K, 2)  # (B, pos, H, E)
        z = torch.einsum("hqk,bkhe->bqhe", self.fz.patterns[layer], v)  # (B, pos, H, E)
        out = z.reshape(*z.shape[:2], H * E) @ L.W_O
        return out + L.b_O if bias and L.b_O is not None else out

    def run(self, writes: list[torch.Tensor], bias: bool, stop: int | None = None, on_pre=None, mlp=None) -> torch.Tensor:
        """The residual stream after the last block, (B, pos, d_model), from `writes` (L + 1 tensors (B, pos, d_model)).

        writes[0] is the embedding, writes[l + 1] what MLP l writes besides its skip path (features, error,
        b_dec). `on_pre(layer, mlp_in)` sees each layer's MLP input (B, pos, d_model); `stop` ends after
        that layer's MLP input (targets at that layer need nothing later). `mlp(layer, mlp_in)`, when given,
        computes what MLP l writes instead of writes[l + 1]."""
        w = self.fz.w
        x = writes[0]
        for layer in range(w.n_layers):
            attn = self.attention(layer, x, bias)
            L = w.layers[layer]
            if w.parallel:
                mlp_in = frozen_norm(L.ln1 if L.ln2 is None else L.ln2, self.s2[layer], x, bias)
                base = x + attn
            else:
                base = x + attn
                mlp_in = frozen_norm(L.ln2, self.s2[layer], base, bias)
            if on_pre is not None:
                on_pre(layer, mlp_in)
            if stop is not None and layer == stop:
                return x
            tc = self.tcs[layer]
            out = writes[layer + 1] if mlp is None else mlp(layer, mlp_in)
            if tc.W_skip is not None:
                out = out + mlp_in @ tc.W_skip.to(mlp_in)
            x = base + out
        return x

    def logit_directions(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((d_model, n) unembedding columns minus their mean, (n,) bias minus its mean): logit minus mean logit."""
        w = self.fz.w
        u = w.W_U[:, tokens] - w.W_U.mean(1, keepdim=True)
        b = torch.zeros(len(tokens)) if w.b_U is None else w.b_U[tokens] - w.b_U.mean()
        return u, b

    def logit_values(self, x: torch.Tensor, tokens: torch.Tensor, bias: bool) -> torch.Tensor:
        """(B, d_model) the last position's stream -> (B, n) the logits minus the mean logit."""
        u, b = self.logit_directions(tokens)
        y = frozen_norm(self.fz.w.ln_final, self.sf[-1:], x[:, None], bias)[:, 0] @ u
        return y + b if bias else y

    def norm_direction(self) -> torch.Tensor:
        """(d_model,) r = u / (d σ²), u the final norm's input at the last position of the real run (centred for a
        LayerNorm), σ its frozen divisor: r · Δx is the first-order relative change of that divisor when the last
        position's stream changes by Δx (σ_new / σ ≈ 1 + r · Δx; a LayerNorm's centring drops out, as u sums to 0)."""
        x = self.fz.final[-1]  # (d_model,)
        u = x - x.mean() if self.fz.w.ln_final.kind == "layer" else x
        return u / (len(u) * self.sf[-1, 0] ** 2)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_model) the last position's stream -> (B, d_model) the final norm's u / σ, σ frozen (before γ and β):
        linear in x."""
        u = x - x.mean(-1, keepdim=True) if self.fz.w.ln_final.kind == "layer" else x
        return u / self.sf[-1]

    def readouts(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, d_model) the last position's stream -> (B, n + 1 + d_model), each linear in x: the logits minus the mean
        logit without their biases (logit_values), the final norm's share r · x (norm_direction), and the normalised
        stream u / σ (normalised)."""
        share = x @ self.norm_direction().to(x)  # (B,)
        return torch.cat([self.logit_values(x, tokens, bias=False), share[:, None], self.normalised(x)], 1)


def on_device(tc: Transcoder, device) -> Transcoder:
    """The transcoder with its tensors on `device` (itself when they are there already)."""
    if tc.W_enc.device == torch.device(device):
        return tc
    moved = {n: getattr(tc, n).to(device) for n in ("W_enc", "b_enc", "W_dec", "b_dec") if getattr(tc, n) is not None}
    for n in ("W_skip", "threshold", "W_dec_later"):
        if getattr(tc, n) is not None:
            moved[n] = getattr(tc, n).to(device)
    return dataclasses.replace(tc, **moved)


# ---- the direct edges: gradients of the frozen model --------------------------------------------------


def edge_rows(
    lin: Linear,
    fz: Frozen,
    tcs: dict[int, Transcoder],
    targets: list[tuple[int, int, int]],
    active: torch.Tensor,
    groups: list,
    err: torch.Tensor,
    logit_ids: torch.Tensor,
) -> torch.Tensor:
    """(B, n_active + L·P + P) the direct edges into a batch of targets, by one backward pass of the frozen linear model.

    A target is (layer, position, feature) for a feature's pre-activation, or (L, -1, j) for the last position's
    readouts (Linear.readouts): j < len(logit_ids) a logit node, j = len(logit_ids) the final norm's share, j =
    len(logit_ids) + 1 + k the k-th coordinate of the normalised stream."""
    w = fz.w
    L, P, d = w.n_layers, fz.n_pos, fz.emb.shape[-1]
    B = len(targets)
    device = fz.emb.device
    layers = torch.tensor([t[0] for t in targets])
    stop = int(layers.max())
    n = P if stop == L else max(t[1] for t in targets) + 1  # positions the batch needs: up to its last target's
    lin = lin.prefix(n)
    with torch.enable_grad():
        writes = [torch.zeros(B, n, d, device=device, requires_grad=True) for _ in range(L + 1)]
        picked = torch.zeros(B, device=device)

        def on_pre(layer: int, mlp_in: torch.Tensor) -> None:
            nonlocal picked
            rows = (layers == layer).nonzero()[:, 0]
            if len(rows):
                pos = torch.tensor([targets[r][1] for r in rows.tolist()])
                f = torch.tensor([targets[r][2] for r in rows.tolist()])
                enc = tcs[layer].W_enc[:, f].T  # (rows, d_model)
                got = (mlp_in[rows.to(device), pos.to(device)] * enc.to(device)).sum(-1)  # (rows,)
                picked = picked.index_add(0, rows.to(device), got)

        x = lin.run(writes, bias=False, stop=stop if stop < L else None, on_pre=on_pre)
        if stop == L:
            rows = (layers == L).nonzero()[:, 0]
            j = torch.tensor([targets[r][2] for r in rows.tolist()])
            vals = lin.readouts(x[rows.to(device), -1], logit_ids)  # (rows, n_logit + 1 + d_model) (Linear.readouts)
            picked = picked.index_add(0, rows.to(device), vals[torch.arange(len(rows)), j.to(device)])
        grads = torch.autograd.grad(picked.sum(), writes, allow_unused=True)
    g = [torch.zeros(B, n, d, device=device) if x is None else x for x in grads]  # ∂target/∂(what is written at each place)
    out = torch.zeros(B, len(active) + L * P + P)
    for layer, pos, sel, feats, acts in groups:
        if pos < n:  # later positions cannot reach the batch's targets: their edges stay zero
            dec = tcs[layer].W_dec[feats]  # (n_cell, d_model)
            edge = g[layer + 1][:, pos] @ dec.T  # (B, n_cell): gradient · decoder row
            for j in range(tcs[layer].n_later):  # a cross-layer feature writes to the later MLP outputs too
                edge = edge + g[layer + 2 + j][:, pos] @ tcs[layer].W_dec_later[feats, j].T
            out[:, sel] = (edge * acts).float().cpu()  # × activation
    n_active = len(active)
    errors = (torch.stack(g[1:], 1) * err[:, :n]).sum(-1)  # (B, layer, n)
    out[:, n_active : n_active + L * P].view(B, L, P)[:, :, :n] = errors.float().cpu()
    out[:, n_active + L * P : n_active + L * P + n] = (g[0] * fz.emb[:n]).sum(-1).float().cpu()
    return out


def feature_groups(tcs: dict[int, Transcoder], active: torch.Tensor, act_values: torch.Tensor, device) -> list:
    """[(layer, position, indices into `active`, their feature ids, their activations)], one per (layer, position) with
    active features: a batch's edges are then one small matmul per cell, never a (B, features, d_model) gather, and
    what the features write is read from the decoder per batch rather than held for the whole graph."""
    found = []
    for layer in range(len(tcs)):
        in_layer = active[:, 0] == layer
        for pos in active[in_layer, 1].unique().tolist():
            sel = (in_layer & (active[:, 1] == pos)).nonzero()[:, 0]
            found.append((layer, pos, sel, active[sel, 2].to(device), act_values[sel].to(device)))
    return found


def node_constants(
    lin: Linear, tcs: dict[int, Transcoder], logit_ids: torch.Tensor, feats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """((n_feat,), (n_logit,), the final norm's share's) the constant of each feature node (`feats` (n_feat, 3): layer,
    position, feature), logit node and of the final norm's share (Linear.readouts): the frozen model run on its biases
    alone."""
    fz = lin.fz
    P, d = fz.n_pos, fz.emb.shape[-1]
    zero = torch.zeros(1, P, d, device=fz.emb.device)
    writes = [zero] + [tcs[layer].b_dec.to(zero).expand(1, P, d) for layer in range(fz.w.n_layers)]
    out = torch.zeros(len(feats))

    def on_pre(layer: int, mlp_in: torch.Tensor) -> None:
        rows = (feats[:, 0] == layer).nonzero()[:, 0]
        if len(rows):
            pos, f = feats[rows, 1].to(zero.device), feats[rows, 2].to(zero.device)
            tc = tcs[layer]
            pre = (mlp_in[0, pos] * tc.W_enc[:, f].T.to(zero)).sum(-1) + tc.b_enc[f].to(zero)  # (rows,) only the nodes'
            out[rows] = pre.float().cpu()

    with torch.no_grad():
        x = lin.run(writes, bias=True, on_pre=on_pre)
        logit = lin.logit_values(x[:, -1], logit_ids, bias=True)[0]
        share = x[0, -1] @ lin.norm_direction().to(x)
    return out, logit.float().cpu(), float(share)
