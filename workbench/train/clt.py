"""A cross-layer transcoder (Ameisen et al. 2025): each layer's features read that layer's MLP input and write to the
MLP outputs of that layer and of every later one, trained jointly.

`python -m workbench.train clt MODEL` trains one for a model on the same data and in the same shuffled stream as its
per-layer transcoders (train/transcoders.py: the English corpus, the circuits model's copying task, the stories
model's stories), and saves it as one folder per layer in the transcoder format the workbench reads
(workbench/transcoder.py: each layer's own decoder in `W_dec`, its writes to the later layers in `W_dec_later`), in
models/MODEL/transcoders-clt/ by default (give that folder to the Attribution graph page or probe).

The recipe: TopK per layer (k active features per token and layer), the loss the sum over output layers of each
one's squared error divided by its variance, b_dec started at each output's mean, decoders started small (random
rows scaled by 1/√layers, as the reconstruction of a late layer sums over every earlier one), Adam with warmup and a
final linear decay. Simpler than the per-layer recipe: no AuxK for dead features and no unit-norm decoder (a
feature's decoder rows to different layers share one norm budget there; here they are free).

Its card (card.json, README.md beside the weights) is measured on held-out data as the per-layer card is: the
variance of each MLP's output explained (by every layer's writes to it), the loss with every MLP replaced at once
(the per-layer splice is not defined for one layer of a cross-layer transcoder, which needs the earlier layers'
writes), L0 and dead features.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from workbench import engine
from workbench.model import load_model
from workbench.train.transcoders import CONFIG, TranscoderConfig, heldout, io_of, stream
from workbench.transcoder import Transcoder, cross_layer_outputs, splice_edits

FOLDER = "transcoders-clt"


class Trainer:
    """Every layer's features at once (module doc)."""

    def __init__(self, first: list[tuple[torch.Tensor, torch.Tensor]], cfg: TranscoderConfig, gen: torch.Generator):
        self.cfg, L = cfg, len(first)
        d_in, d_out = first[0][0].shape[1], first[0][1].shape[1]
        P = torch.nn.Parameter
        self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.W_skip, self.scale = [], [], [], [], [], []
        for layer, (_x, y) in enumerate(first):
            W_enc = torch.randn(d_in, cfg.width, generator=gen)
            self.W_enc.append(P(W_enc / W_enc.norm(dim=0, keepdim=True)))  # (d_in, width)
            self.b_enc.append(P(torch.zeros(cfg.width)))
            W_dec = torch.randn(cfg.width, L - layer, d_out, generator=gen)  # (width, this and later layers, d_out)
            self.W_dec.append(P(W_dec / W_dec.norm(dim=-1, keepdim=True) / L**0.5))
            self.b_dec.append(P(y.mean(0)))
            self.W_skip.append(P(torch.zeros(d_in, d_out)) if cfg.skip else None)
            self.scale.append(float(((y - y.mean(0)) ** 2).sum(1).mean()))  # each output's variance: its loss's unit
        params = [*self.W_enc, *self.b_enc, *self.W_dec, *self.b_dec, *[s for s in self.W_skip if s is not None]]
        self.opt = torch.optim.Adam(params, lr=cfg.lr)
        self.since_fired = torch.zeros(L, cfg.width, dtype=torch.int64)
        self.log: list[dict] = []

    def reconstruct(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """([per layer (batch, width) activations], [per layer (batch, d_out) reconstructed MLP outputs])."""
        acts, outs = [], []
        for layer, x in enumerate(xs):
            pre = x @ self.W_enc[layer] + self.b_enc[layer]
            top = pre.topk(self.cfg.k, dim=-1)
            acts.append(torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()))
        for out_layer, x in enumerate(xs):
            y = self.b_dec[out_layer] + (x @ self.W_skip[out_layer] if self.W_skip[out_layer] is not None else 0)
            for layer in range(out_layer + 1):
                y = y + acts[layer] @ self.W_dec[layer][:, out_layer - layer]
            outs.append(y)
        return acts, outs

    def step(self, batch: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> dict:
        acts, outs = self.reconstruct([x for x, _ in batch])
        fvu = [((y_hat - y) ** 2).sum(-1).mean() / s for (_, y), y_hat, s in zip(batch, outs, self.scale, strict=True)]
        loss = sum(fvu)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        with torch.no_grad():
            fired = torch.stack([(a > 0).any(0) for a in acts])  # (layer, width)
            self.since_fired += len(batch[0][0])
            self.since_fired[fired] = 0
        return {"fvu": [round(float(f.detach()), 5) for f in fvu], "dead": int((self.since_fired >= self.cfg.dead_after).sum())}

    def transcoders(self, model_name: str) -> dict[int, Transcoder]:
        out = {}
        for layer in range(len(self.W_enc)):
            W_dec = self.W_dec[layer].detach().clone()
            out[layer] = Transcoder(
                layer=layer, W_enc=self.W_enc[layer].detach().clone(), b_enc=self.b_enc[layer].detach().clone(),
                W_dec=W_dec[:, 0].contiguous(), b_dec=self.b_dec[layer].detach().clone(),
                W_skip=None if self.W_skip[layer] is None else self.W_skip[layer].detach().clone(), activation="topk",
                k=self.cfg.k, meta={"model_name": f"{model_name} cross-layer transcoder"},
                W_dec_later=W_dec[:, 1:].contiguous() if W_dec.shape[1] > 1 else None,
            )  # fmt: skip
        return out


def train(model, cfg: TranscoderConfig = CONFIG, log=print) -> tuple[dict[int, Transcoder], dict]:
    """({layer: transcoder with its later-layer decoders}, training record)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    w = engine.weights_of(model)
    batches = stream(model, w, cfg)  # every layer's (x, y) from the same tokens, in the same order
    batch = next(batches)
    trainer = Trainer(batch, cfg, torch.Generator().manual_seed(cfg.seed))
    steps = max(1, cfg.tokens // cfg.batch)
    start = time.process_time()
    for s in range(steps):
        lr = cfg.lr * min(1.0, (s + 1) / cfg.warmup) * min(1.0, (steps - s) / (0.2 * steps))
        record = trainer.step(batch, lr)
        if s % 100 == 0 or s == steps - 1:
            trainer.log.append({"step": s, **record})
            log(f"step {s}/{steps}: fvu per layer {record['fvu']} dead {record['dead']}")
        batch = next(batches)
    return trainer.transcoders(model.info.name), {"steps": steps, "tokens": steps * cfg.batch,
                                                  "cpu_seconds": round(time.process_time() - start, 1), "log": trainer.log}  # fmt: skip


def quality(model, tcs: dict[int, Transcoder], name: str, rows: torch.Tensor, scored: torch.Tensor) -> dict:
    """Held-out measurements (module doc): per output layer the variance explained, and per layer L0 and dead features;
    the loss with every MLP replaced at once."""
    w = engine.weights_of(model)
    L = len(tcs)
    err, total_sq, total_sum = [0.0] * L, [0.0] * L, [0.0] * L
    active, fired, n = [0] * L, [torch.zeros(tc.d_sae, dtype=torch.bool) for tc in tcs.values()], 0
    with torch.no_grad():
        for s in range(0, len(rows), 16):
            io = io_of(w, rows[s : s + 16])
            xs = {layer: x[:, 1:].reshape(-1, x.shape[-1]) for layer, (x, _) in enumerate(io)}  # BOS left out
            ys = {layer: y[:, 1:].reshape(-1, y.shape[-1]) for layer, (_, y) in enumerate(io)}
            acts = {layer: tcs[layer].encode(xs[layer]) for layer in tcs}
            got = cross_layer_outputs(tcs, acts, xs)
            for layer in tcs:
                err[layer] += float(((got[layer] - ys[layer]) ** 2).sum())
                total_sq[layer] += float((ys[layer].double() ** 2).sum())
                total_sum[layer] = total_sum[layer] + ys[layer].double().sum(0)
                active[layer] += int((acts[layer] > 0).sum())
                fired[layer] |= (acts[layer] > 0).any(0)
            n += len(ys[0])

    def loss(edits) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(rows), 16):
                ids, keep = rows[s : s + 16], scored[s : s + 16]
                logits = engine.forward(w, ids, edits=edits).logits[:, :-1]
                total += float(torch.nn.functional.cross_entropy(logits[keep], ids[:, 1:][keep], reduction="sum"))
                count += int(keep.sum())
        return total / count

    out: dict = {"heldout": name, "layers": {}}
    for layer in tcs:
        variance = total_sq[layer] - float((total_sum[layer] ** 2).sum()) / n
        dead = int((~fired[layer]).sum())
        out["layers"][layer] = {"variance_explained": 1 - err[layer] / variance, "l0": active[layer] / n, "dead": dead,
                                "dead_fraction": dead / tcs[layer].d_sae, "tokens": n}  # fmt: skip
    clean, spliced = loss([]), loss(splice_edits(w, tcs))
    zero = loss([engine.Edit("ablate", "mlp_out", layer) for layer in tcs])
    out["all_layers"] = {
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero": zero,
        "loss_recovered": (zero - spliced) / (zero - clean),
    }
    return out


def build(model_name: str, cfg: TranscoderConfig = CONFIG, out: Path | None = None, log=print) -> dict:
    """Trains, measures and writes a model's cross-layer transcoder with its card; returns the card's record."""
    torch.set_num_threads(cfg.threads)
    model = load_model(model_name)
    out = Path(out or Path(model.info.source) / FOLDER)
    tcs, record = train(model, cfg, log)
    q = quality(model, tcs, *heldout(model))
    for layer, tc in tcs.items():
        tc.save(out / f"layer{layer}", quality=q["layers"][layer], trained_with=dataclasses.asdict(cfg))
    card = {
        "model": model_name,
        "config": dataclasses.asdict(cfg),
        "quality": q,
        "training": {k: v for k, v in record.items() if k != "log"},
    }
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / "training_log.json").write_text(json.dumps(record["log"]) + "\n")
    rows = "".join(
        f"| {layer} | {r['variance_explained']:.3f} | {r['l0']:.1f} | {r['dead']} ({r['dead_fraction']:.1%}) |\n"
        for layer, r in q["layers"].items()
    )
    a = q["all_layers"]
    (out / "README.md").write_text(
        f"# Cross-layer transcoder of the {model_name} model\n\n"
        f"Trained by `python -m workbench.train clt {model_name}` (`workbench/train/clt.py`): width {cfg.width} per layer, k = "
        f"{cfg.k} per layer, {card['training']['tokens']:,} training activations, {card['training']['cpu_seconds']} CPU s. "
        f"Written by that command from its measurements on held-out data ({q['heldout']}).\n\n"
        "| layer | variance explained (its MLP output, from every layer's writes) | L0 | dead features |\n|---|---|---|---|\n"
        f"{rows}\nEvery MLP replaced at once: loss {a['loss_spliced']:.3f} (unchanged {a['loss_clean']:.3f}, every MLP "
        f"zero-ablated {a['loss_zero']:.3f}): **{a['loss_recovered']:.3f}** of the loss recovered.\n"
    )
    return card
