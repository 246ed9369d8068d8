"""Student inputs: an example (and its mode's pairs) as token ids, labels and padded batches.

Prompts come from :func:`explain.formatting.build_source`, the one formatting path shared with
attribution and evaluation, so train and evaluate feed the student exactly the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from explain.formatting import ANSWER_CUE, EXPLAIN_CUE, Source, build_source, encode_target
from explain.models import LoadedModel

from .modes import Pair, get_mode
from .tasks import get_task

IGNORE = -100  # label value the loss skips


@dataclass
class Features:
    input_ids: list[int]
    labels: list[int]  # decoder-only: aligned with input_ids; encoder-decoder: decoder targets
    kind: str = "predict"
    weight: float = 1.0
    warnings: list[str] = field(default_factory=list)

    @property
    def n_targets(self) -> int:
        return sum(t != IGNORE for t in self.labels)


def example_source(
    loaded: LoadedModel,
    example,
    budget: int,
    prefix: str | None = None,
    hint: list[str] | None = None,
    kind: str = "predict",
) -> Source:
    """The prompt of ``example`` for the student, fitted into ``budget`` tokens."""
    template = get_task(example.task).template
    cue = ANSWER_CUE if kind == "predict" else EXPLAIN_CUE
    return build_source(loaded, template, example.fields, budget, prefix, hint, cue)


def pair_features(loaded: LoadedModel, example, pair: Pair, max_len: int) -> Features:
    """Token ids and labels of one training pair; the loss sees target tokens (+ EOS) only.

    The target keeps at most half of ``max_len``; the prompt fits the rest by the shared
    truncation rule (never cutting the chat header, options or cue).
    """
    tgt = encode_target(loaded, pair.target)[: max(1, max_len // 2)]
    src = example_source(loaded, example, max_len - len(tgt), pair.prefix, pair.hint, pair.kind)
    if loaded.is_encoder_decoder:
        return Features(src.ids, tgt, pair.kind, pair.weight, src.warnings)
    ids = src.ids + tgt
    return Features(ids, [IGNORE] * len(src.ids) + tgt, pair.kind, pair.weight, src.warnings)


def example_features(
    loaded: LoadedModel,
    example,
    mode: str,
    words: list[str] | None = None,
    alpha: float = 0.5,
    seed: int = 0,
    max_len: int = 256,
) -> list[Features]:
    """Every training pair of one example under ``mode``."""
    pairs = get_mode(mode).pairs(example, words, alpha, seed)
    return [pair_features(loaded, example, p, max_len) for p in pairs]


def collate_features(feats: list[Features], pad_id: int, encoder_decoder: bool) -> dict:
    """Padded tensors; labels padded with -100 so padding never counts in the loss.

    Decoder-only rows are LEFT-padded, so every row's target ends at the last position and the
    vocabulary projection is needed for the last ``max target + 1`` positions only.
    """
    n, width = len(feats), max(len(f.input_ids) for f in feats)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    lw = max(len(f.labels) for f in feats) if encoder_decoder else width
    labels = torch.full((n, lw), IGNORE, dtype=torch.long)
    for i, f in enumerate(feats):
        k = len(f.input_ids)
        sl = slice(0, k) if encoder_decoder else slice(width - k, width)
        ids[i, sl] = torch.tensor(f.input_ids)
        mask[i, sl] = 1
        lab = slice(0, len(f.labels)) if encoder_decoder else sl
        labels[i, lab] = torch.tensor(f.labels)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if not encoder_decoder:
        batch["keep"] = max(f.n_targets for f in feats) + 1
    return batch


def token_nll(model, batch: dict, encoder_decoder: bool) -> torch.Tensor:
    """Summed negative log-likelihood of each row's target tokens, ``[B]`` (float32)."""
    labels = batch["labels"]
    if encoder_decoder:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,  # shifted right into decoder inputs, -100 read as padding
            use_cache=False,
        )
        logits = out.logits
    else:
        mask = batch["attention_mask"]
        keep = int(batch["keep"])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions of real tokens
        kw = dict(input_ids=batch["input_ids"], attention_mask=None if bool(mask.all()) else mask,
                  position_ids=pos, use_cache=False)  # fmt: skip
        try:  # the vocabulary projection for the target positions only
            logits = model(**kw, logits_to_keep=keep).logits
        except TypeError:  # a model class without logits_to_keep: project everything
            logits = model(**kw).logits[:, -keep:]
        logits = logits[:, :-1]  # position p predicts token p + 1
        labels = labels[:, labels.shape[1] - (keep - 1) :]
    logp = torch.log_softmax(logits.float(), dim=-1)
    valid = labels != IGNORE
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * valid).sum(dim=1)


def step_counts(items, idxs: list[list[int]]) -> dict[str, int]:
    """Target tokens per kind over the effective batch (all micro-batches, all processes)."""
    counts: dict[str, int] = {}
    for idx in idxs:
        for i in idx:
            for f in items[i]:
                counts[f.kind] = counts.get(f.kind, 0) + f.n_targets
    return counts


def batch_loss(model, feats: list[Features], counts: dict, pad_id, enc_dec, device, autocast):
    """This micro-batch's share of the step objective, and its per-kind NLL sums."""
    batch = collate_features(feats, pad_id, enc_dec)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with autocast:
        nll = token_nll(model, batch, enc_dec)
    scale = torch.tensor([f.weight / counts[f.kind] for f in feats], device=nll.device)
    sums: dict[str, float] = {}
    for f, v in zip(feats, nll.detach().tolist()):
        sums[f.kind] = sums.get(f.kind, 0.0) + v
    return (nll * scale).sum(), sums


__all__ = [
    "batch_loss",
    "step_counts",
    "IGNORE",
    "Features",
    "collate_features",
    "example_features",
    "example_source",
    "pair_features",
    "token_nll",
]
