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
    marker: str = "cue",
) -> list[Features]:
    """Every training pair of one example under ``mode`` (``marker``: TrainConfig.task_marker)."""
    pairs = get_mode(mode).pairs(example, words, alpha, seed, marker)
    return [pair_features(loaded, example, p, max_len) for p in pairs]


def shared_prompt(group: list[Features]) -> int:
    """Leading tokens every pair of one example has in common before any target token.

    Multi-task pairs differ only in their cue ("Answer:" / "Explanation:") and target, so a
    decoder-only student can read their prompt once (see :func:`collate_groups`)."""
    if len(group) < 2:
        return 0
    n = min(len(f.input_ids) - f.n_targets for f in group)  # never a target token
    first = group[0].input_ids
    for i in range(n):
        if any(f.input_ids[i] != first[i] for f in group[1:]):
            return i
    return n


def _packed_row(group: list[Features]) -> tuple[list, list, list, list, list]:
    """One decoder-only row: (ids, labels, positions, segment, owner) of a group of pairs.

    Segment 0 is the shared prompt; each pair's own tokens form segment ``1 + j`` and see
    only the shared prompt and themselves, at the positions they have in the pair alone, so
    every pair's loss (and its gradient) is exactly the one of its separate sequence.
    ``owner`` names the pair (index in ``group``) of each target token, -1 elsewhere."""
    if len(group) == 1:
        f = group[0]
        owner = [-1 if t == IGNORE else 0 for t in f.labels]
        return f.input_ids, f.labels, list(range(len(f.input_ids))), [0] * len(f.labels), owner
    n = shared_prompt(group)
    ids, labels = list(group[0].input_ids[:n]), [IGNORE] * n
    pos, seg, owner = list(range(n)), [0] * n, [-1] * n
    for j, f in enumerate(group):
        tail = f.input_ids[n:]
        ids += tail
        labels += f.labels[n:]
        pos += range(n, n + len(tail))
        seg += [1 + j] * len(tail)
        owner += [-1 if t == IGNORE else j for t in f.labels[n:]]
    return ids, labels, pos, seg, owner


def collate_groups(
    groups: list[list[Features]], pad_id: int, encoder_decoder: bool, share: bool = True
) -> dict:
    """A padded batch of the pairs in ``groups`` (each group: the pairs of one example).

    Decoder-only: each group becomes ONE left-padded row when ``share`` (its pairs' common
    prompt computed once, the pairs' own tokens side by side behind a block attention mask),
    else one row per pair. Encoder-decoder students get one row per pair. ``owner`` maps
    every target token to its pair's index in the flattened groups, for per-pair losses."""
    if encoder_decoder:
        flat = [f for g in groups for f in g]
        n, width = len(flat), max(len(f.input_ids) for f in flat)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        lw = max(len(f.labels) for f in flat)
        labels = torch.full((n, lw), IGNORE, dtype=torch.long)
        owner = torch.full((n, lw), -1, dtype=torch.long)
        for i, f in enumerate(flat):
            ids[i, : len(f.input_ids)] = torch.tensor(f.input_ids)
            mask[i, : len(f.input_ids)] = 1
            labels[i, : len(f.labels)] = torch.tensor(f.labels)
            owner[i, : len(f.labels)] = torch.where(labels[i, : len(f.labels)] == IGNORE, -1, i)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "owner": owner,
                "n_pairs": n}  # fmt: skip
    if not share:
        groups = [[f] for g in groups for f in g]
    rows, base = [], 0
    for g in groups:
        ids_, labels_, pos_, seg_, owner_ = _packed_row(g)
        rows.append((ids_, labels_, pos_, seg_, [o + base if o >= 0 else -1 for o in owner_]))
        base += len(g)
    n, width = len(rows), max(len(r[0]) for r in rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)
    owner = torch.full((n, width), -1, dtype=torch.long)
    keep = 1
    for i, (r_ids, r_labels, r_pos, r_seg, r_owner) in enumerate(rows):
        sl = slice(width - len(r_ids), width)  # left padding: every row ends at the end
        ids[i, sl] = torch.tensor(r_ids)
        mask[i, sl] = 1
        labels[i, sl] = torch.tensor(r_labels)
        pos[i, sl] = torch.tensor(r_pos)
        seg[i, sl] = torch.tensor(r_seg)
        owner[i, sl] = torch.tensor(r_owner)
        first = next((k for k, t in enumerate(r_labels) if t != IGNORE), len(r_labels))
        keep = max(keep, len(r_labels) - first + 1)  # the vocabulary projection's positions
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "owner": owner,
             "position_ids": pos, "keep": keep, "n_pairs": base}  # fmt: skip
    if bool((seg > 0).any()):
        # Key j is visible from query i when j <= i, j is real, and j is in the shared prompt
        # or in i's own pair. A padding query sees itself only (its output is never used).
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
        visible = causal & same & (seg[:, None, :] >= 0)
        batch["visible"] = visible | torch.eye(width, dtype=torch.bool)
    return batch


def collate_features(feats: list[Features], pad_id: int, encoder_decoder: bool) -> dict:
    """Padded tensors, one row per pair; labels padded with -100 so padding never counts.

    Decoder-only rows are LEFT-padded, so every row's target ends at the last position and the
    vocabulary projection is needed for the last ``max target + 1`` positions only.
    """
    return collate_groups([[f] for f in feats], pad_id, encoder_decoder, share=False)


def _additive_mask(visible: torch.Tensor, model) -> torch.Tensor:
    """``[B, 1, T, T]`` additive mask (0 visible, dtype minimum hidden), the form eager and
    SDPA attention take a ready-made 4D mask in."""
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill(~visible, torch.finfo(dtype).min)[:, None]


def token_nll(model, batch: dict, encoder_decoder: bool) -> torch.Tensor:
    """Summed negative log-likelihood of each pair's target tokens, ``[pairs]`` (float32)."""
    labels, owner = batch["labels"], batch["owner"]
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
        if "visible" in batch:
            attn = _additive_mask(batch["visible"], model)
        else:
            attn = None if bool(mask.all()) else mask
        kw = dict(input_ids=batch["input_ids"], attention_mask=attn,
                  position_ids=batch["position_ids"], use_cache=False)  # fmt: skip
        try:  # the vocabulary projection for the target positions only
            logits = model(**kw, logits_to_keep=keep).logits
        except TypeError:  # a model class without logits_to_keep: project everything
            logits = model(**kw).logits[:, -keep:]
        logits = logits[:, :-1]  # position p predicts token p + 1
        labels = labels[:, labels.shape[1] - (keep - 1) :]
        owner = owner[:, owner.shape[1] - (keep - 1) :]
    logp = torch.log_softmax(logits.float(), dim=-1)
    valid = labels != IGNORE
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(int(batch["n_pairs"]), dtype=picked.dtype, device=picked.device)
    return out.index_add(0, owner[valid], -picked[valid])


def step_counts(items, idxs: list[list[int]]) -> dict[str, int]:
    """Target tokens per kind over the effective batch (all micro-batches, all processes)."""
    counts: dict[str, int] = {}
    for idx in idxs:
        for i in idx:
            for f in items[i]:
                counts[f.kind] = counts.get(f.kind, 0) + f.n_targets
    return counts


def batch_loss(
    model, groups: list[list[Features]], counts: dict, pad_id, enc_dec, device, autocast,
    share: bool = True,
):  # fmt: skip
    """This micro-batch's share of the step objective, and its per-kind NLL sums.

    ``groups``: the pairs of each example; with ``share`` a decoder-only student reads each
    example's common prompt once (the same losses, fewer tokens: :func:`collate_groups`)."""
    feats = [f for g in groups for f in g]
    batch = collate_groups(groups, pad_id, enc_dec, share)
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
    "collate_groups",
    "example_features",
    "example_source",
    "pair_features",
    "shared_prompt",
    "token_nll",
]
