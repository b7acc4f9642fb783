"""Features: what an SAE (workbench/sae.py) reads in a model's residual stream, on a prompt, and what it does when edited.

- `prompt_features`: every SAE's feature activations at every position of one prompt (the
  token x feature heatmap and a feature's activation across the prompt read it).
- `search`: features by a token (whose top examples sit on it) or by a piece of text (the ones
  most active on it).
- `intervene`: regenerate with a feature ablated or clamped at chosen positions: an edit set
  (interventions.Clamp) run by `interventions.intervene`, so that this page and the Intervene page
  show the same result.

SAE quality and the held-out text are in sae_quality.py, dashboards in dashboards.py, and the
registry of a model's SAEs (shipped and a user's, by name) in sae.py. The `*_of` functions take an
SAE's name (sae.sae_set) rather than the SAE: a view's cache is keyed by names, not tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import interventions
from workbench import sae as registry  # the module: `sae` names an SAE below
from workbench.dashboards import Dashboard, DashboardStats, dashboard, stats_for
from workbench.errors import InputError
from workbench.generate import Sampling
from workbench.model import LoadedModel
from workbench.runs import Run, check_position, encode, provenance, run_prompt
from workbench.sae import SAE
from workbench.sae_quality import heldout_text, windows

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


def prompt_features(model: LoadedModel, saes: dict[str, SAE], prompt: str, run: Run | None = None) -> PromptFeatures:
    """PromptFeatures of `prompt` for every SAE in `saes`, read from the prompt's (cached) run, or from `run` (an edited
    run of the prompt holding every SAE's hook: the facade's `wb.edits`)."""
    hooks = tuple(dict.fromkeys(s.hook_name for s in saes.values()))  # a user's SAE is named by its folder
    run = run_prompt(model, prompt, names=hooks) if run is None else run
    with torch.no_grad():
        # run[hook]: (pos, d_model), or a hook_z SAE's (pos, head, d_head) -> (pos, d_sae)
        acts = {h: s.encode(run[s.hook_name].float()) for h, s in saes.items()}
    return PromptFeatures(run.tokens, run.labels, acts, provenance(model, [prompt], method="SAE features", hooks=list(saes)))


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


GREEDY = Sampling(max_new_tokens=20)


def clamp_set(model: LoadedModel, name: str, prompt: str, feature: int, value: float = 0.0, positions=None) -> interventions.EditSet:
    """The edit set that sets the SAE `name`'s `feature` to `value` (0: ablates it) at `positions` (prompt positions,
    checked against the prompt; None: every position, generated ones included)."""
    if positions is not None:
        n = len(encode(model, prompt)[0])
        positions = tuple(sorted({check_position(n, p) for p in positions}))
    which = name[len(registry.USER) :] if name.startswith(registry.USER) else name  # a user's SAE: its folder (edit_values.load_sae)
    return interventions.EditSet((interventions.Clamp("feature", None, int(feature), float(value), positions, which),))


def intervene(
    model: LoadedModel, name: str, prompt: str, feature: int, value=0.0, positions=None, sampling=GREEDY, folders: tuple[str, ...] = ()
) -> interventions.Intervention:
    """`prompt` regenerated with the SAE `name`'s `feature` set to `value` (0: ablated) at `positions` (None: everywhere),
    beside the original: interventions.intervene with the one clamp (`clamp_set`)."""
    registry.pick(model, name, folders).check_feature(feature)  # the name is one of this view's SAEs
    return interventions.intervene(model, prompt, clamp_set(model, name, prompt, feature, value, positions), sampling=sampling)


def prompt_features_of(model: LoadedModel, prompt: str, folders: tuple[str, ...] = ()) -> PromptFeatures:
    return prompt_features(model, registry.sae_set(model, folders), prompt)


def stats_of(model: LoadedModel, name: str, folders: tuple[str, ...] = ()) -> DashboardStats:
    return stats_for(model, registry.pick(model, name, folders), registry.folder_of(model, name))


def dashboard_of(model: LoadedModel, name: str, feature: int, folders: tuple[str, ...] = ()) -> Dashboard:
    s = registry.pick(model, name, folders)
    return dashboard(model, s, stats_for(model, s, registry.folder_of(model, name)), feature)


def search_of(model: LoadedModel, name: str, query: str, folders: tuple[str, ...] = ()) -> list[dict]:
    s = registry.pick(model, name, folders)
    return search(model, s, stats_for(model, s, registry.folder_of(model, name)), query)


def card_of(model: LoadedModel) -> dict | None:
    """The shipped SAEs' card (train/sae.py), or None."""
    path = Path(model.info.source) / registry.SAE_FOLDER / "card.json"
    return json.loads(path.read_text()) if path.is_file() else None
