"""The metric: one number per run read from the next-token logits, for every view that measures a prediction.

- **logit difference**: logit(answer) − logit(wrong), the patching papers' metric (a wrong token is needed);
- **probability**: p(answer), softmax over the whole vocabulary;
- **log-probability**: log p(answer);
- **logit above mean**: logit(answer) − the mean logit, the logit difference against every token at once: linear in
  the logits like the logit difference, and 0 for a flat distribution, so that a share of it kept is meaningful
  (the information-flow graph's faithfulness reads it when no wrong token is given).

Patching, the node and edge methods, interventions, input attribution and the graph all read a `Metric`; a prompt
pair (tasks.Pair) and a kind make one with `Metric.of`. Where a
view lets the wrong token be left out, `metric_for` is the one fallback rule: the logit difference when a wrong
token is given, else the view's own default (input attribution: the log-probability, whose gradient ranks inputs;
the graph: the logit above mean, whose share is meaningful).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import InputError

METRICS = ("logit difference", "probability", "log-probability")  # the metrics a user chooses from
KINDS = (*METRICS, "logit above mean")  # and the graph's fallback


@dataclass(frozen=True)
class Metric:
    """What one number of a run reads from its next-token logits: `kind` (one of KINDS), the answer token's id and,
    for the logit difference, the wrong token's id."""

    kind: str
    answer: int
    wrong: int | None = None

    @classmethod
    def of(cls, pair, tokenizer, kind: str = "logit difference") -> Metric:
        """The metric of kind `kind` that a prompt pair (tasks.Pair) reads, its answer and wrong tokens resolved to ids
        (Pair.ids); `check(model)` then checks it against the model."""
        return cls(kind, *pair.ids(tokenizer))

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) the metric of next-token logits (batch, d_vocab)."""
        if self.kind == "logit difference":
            return logits[:, self.answer] - logits[:, self.wrong]
        if self.kind == "probability":
            return logits.softmax(-1)[:, self.answer]
        if self.kind == "log-probability":
            return logits.log_softmax(-1)[:, self.answer]
        return logits[:, self.answer] - logits.mean(-1)

    def columns(self) -> list[int] | None:
        """The only logits the metric reads, when it reads only some (the logit difference): an engine run may
        unembed just these (engine.forward(..., columns=...))."""
        return [self.answer, self.wrong] if self.kind == "logit difference" else None

    def value_of_columns(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) the metric of logits restricted to `columns()` (batch, 2), or of full logits (batch, d_vocab)."""
        if self.kind == "logit difference" and logits.shape[-1] == 2:
            return logits[:, 0] - logits[:, 1]
        return self.value(logits)

    def check(self, model) -> Metric:
        """The metric itself, or InputError when its kind is unknown or a token is outside the model's vocabulary."""
        from workbench.runs import check_token_ids

        if self.kind not in KINDS:
            raise InputError(f"unknown metric '{self.kind}': use one of {', '.join(METRICS)}")
        check_token_ids(model, [self.answer], "the answer token")
        if self.kind == "logit difference":
            if self.wrong is None:
                raise InputError("the logit difference needs a wrong token")
            check_token_ids(model, [self.wrong], "the wrong token")
        return self

    def label(self, tokenizer) -> str:
        """The metric in words, e.g. "logit(␣Mary) − logit(␣John)" or "probability of ␣cloud"."""
        from workbench.tokens import token_labels

        a = token_labels(tokenizer, [self.answer])[0]
        if self.kind == "logit difference":
            return f"logit({a}) − logit({token_labels(tokenizer, [self.wrong])[0]})"
        if self.kind == "logit above mean":
            return f"logit({a}) − mean logit"
        return f"{self.kind} of {a}"


def metric_for(answer: int, wrong: int | None, without_wrong: str) -> Metric:
    """The one fallback rule: the logit difference answer − wrong when a wrong token is given, else `without_wrong`."""
    if without_wrong not in KINDS or without_wrong == "logit difference":
        raise InputError(f"a metric without a wrong token is one of {', '.join(k for k in KINDS if k != 'logit difference')}")
    return Metric("logit difference", answer, wrong) if wrong is not None else Metric(without_wrong, answer)
