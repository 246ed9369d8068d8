"""Language-model scoring: log-probabilities of answer tokens under teacher forcing.

Used by attribution (the attributed quantity), faithfulness and evaluation (answer and option
log-likelihoods). A :class:`Scorer` maps prompt embeddings ``[B', Lp, D]`` to answer-token
log-probs ``[B', T]`` for decoder-only and encoder-decoder models alike. ``B'`` may be a
multiple of the batch (Captum and integrated gradients stack perturbed copies step-major), so
side inputs are tiled to match.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .models import LoadedModel
from .rationale import ROWS


@dataclass
class ScoringBatch:
    prompt_ids: Tensor  # [B, Lp], left-padded (decoder-only) or right-padded (encoder-decoder)
    prompt_mask: Tensor  # [B, Lp], 1 for real tokens
    answer_ids: Tensor  # [B, T], right-padded
    answer_mask: Tensor  # [B, T]

    @property
    def size(self) -> int:
        return self.prompt_ids.shape[0]


def collate(
    prompts: list[list[int]], answers: list[list[int]], pad_id: int, left_pad_prompts: bool
) -> ScoringBatch:
    """Pad token-id lists into a :class:`ScoringBatch` (answers of length 0 are not allowed)."""
    if any(len(a) == 0 for a in answers):
        raise ValueError("every answer needs at least one token")
    lp, t = max(map(len, prompts)), max(map(len, answers))
    b = len(prompts)
    pids = torch.full((b, lp), pad_id, dtype=torch.long)
    pmask = torch.zeros((b, lp), dtype=torch.long)
    aids = torch.full((b, t), pad_id, dtype=torch.long)
    amask = torch.zeros((b, t), dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        sl = slice(lp - len(p), lp) if left_pad_prompts else slice(0, len(p))
        pids[i, sl] = torch.tensor(p)
        pmask[i, sl] = 1
        aids[i, : len(a)] = torch.tensor(a)
        amask[i, : len(a)] = 1
    return ScoringBatch(pids, pmask, aids, amask)


def _tile(x: Tensor, n: int) -> Tensor:
    return x if x.shape[0] == n else x.repeat(n // x.shape[0], *([1] * (x.dim() - 1)))


# Memory the batched Jacobian may use for answer rows at once; rows beyond it run in chunks.
MEMORY_BUDGET_ENV = "KDLENS_ATTR_MEMORY_MB"
DEFAULT_MEMORY_BUDGET_MB = 1024


def memory_budget_bytes() -> int:
    """The row-chunk budget: ``$KDLENS_ATTR_MEMORY_MB`` when set, else 1 GiB."""
    raw = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MEMORY_BUDGET_MB
    except ValueError:
        mb = DEFAULT_MEMORY_BUDGET_MB
    return int(max(mb, 1.0) * 2**20)  # one output row per answer token, or one for the whole answer


# Activation checkpointing of the decoder layers during attribution (issue 9).
# ``$KDLENS_ATTR_CHECKPOINT``: auto (default), on (1/true/yes/on) or off (0/false/no/off).
# auto checkpoints a forward over more than CHECKPOINT_MIN_TOKENS tokens (rows x sequence):
# below it the kept activations are small (Qwen pack: ~3.5 MB a token, 3.5 GB at 1,024) and
# the recomputation would cost extraction's short batched prompts a third more time.
CHECKPOINT_ENV = "KDLENS_ATTR_CHECKPOINT"
CHECKPOINT_MIN_TOKENS = 1024


def checkpoint_enabled(tokens: int | None = None) -> bool:
    """Whether an attribution forward over ``tokens`` tokens checkpoints its layers
    (``$KDLENS_ATTR_CHECKPOINT``; in auto mode, ``tokens`` unknown counts as large)."""
    mode = os.environ.get(CHECKPOINT_ENV, "auto").strip().lower()
    if mode in ("0", "false", "no", "off"):
        return False
    if mode in ("1", "true", "yes", "on"):
        return True
    return tokens is None or tokens > CHECKPOINT_MIN_TOKENS


def checkpoint_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers Hugging Face itself would checkpoint (``GradientCheckpointingLayer``: the
    decoder layers of Llama/Qwen/GPT-2, the blocks of T5); none for other models."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # an older transformers: no checkpointing, results unchanged
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


_CKPT_LOCK = threading.Lock()
_CKPT_USERS: dict[int, list] = {}  # id(model) -> [users, [(layer, wrapper)]]
_CKPT_THREAD = threading.local()  # .on: this thread's forward checkpoints its layers


def _checkpointed(inner):
    """``inner`` (a layer's bound forward) run under non-reentrant checkpointing when this
    thread asked for it and gradients are on; otherwise ``inner`` itself."""
    from torch.utils.checkpoint import checkpoint

    def forward(*args, **kwargs):
        if getattr(_CKPT_THREAD, "on", False) and torch.is_grad_enabled():
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    return forward


@contextmanager
def checkpointed(model: torch.nn.Module):
    """Within this block, this thread's grad-enabled forwards of ``model`` keep only each
    checkpointed layer's inputs and recompute the layer during the backward.

    Why: a saliency forward kept every layer's activations for the backward, 1.1 MB per
    sequence token for SmolLM2 and 2.4 MB for the Qwen pack (4.5 GB / 10 GB at 4,096 tokens,
    issue 9); with checkpointing it keeps one hidden state per layer and one layer's
    activations at a time. Hugging Face's own ``gradient_checkpointing_enable`` acts only in
    training mode, and flipping an arbitrary model to training would switch on its dropout:
    instead the layers' ``forward`` is wrapped here, the model stays in eval mode, and the
    recomputation replays the same deterministic ops, so gradients are unchanged. Shared
    models are safe across threads: the wrappers stay while any thread is inside the block,
    and only threads inside it checkpoint.
    """
    key = id(model)
    with _CKPT_LOCK:
        entry = _CKPT_USERS.get(key)
        if entry is None:
            wrapped = []
            for layer in checkpoint_layers(model):
                wrapper = _checkpointed(layer.forward)
                layer.forward = wrapper  # an instance attribute shadows the class's forward
                wrapped.append((layer, wrapper))
            entry = _CKPT_USERS[key] = [0, wrapped]
        entry[0] += 1
    previous = getattr(_CKPT_THREAD, "on", False)
    _CKPT_THREAD.on = True
    try:
        yield
    finally:
        _CKPT_THREAD.on = previous
        with _CKPT_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                for layer, wrapper in entry[1]:
                    if layer.__dict__.get("forward") is wrapper:
                        del layer.forward
                del _CKPT_USERS[key]


def saved_tensor_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward while ``fn()`` runs (what
    checkpointing saves; the benchmark and the tests measure it)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


class Scorer:
    """Callable ``prompt_embeds -> answer log-probs [B', T]`` (or ``[B', 1]`` with
    ``rows="answer"``: the summed log-prob, DESIGN's "answer's log-probability")."""

    def __init__(
        self,
        loaded: LoadedModel,
        batch: ScoringBatch,
        rows: str = "tokens",
        checkpoint: bool | None = None,
    ) -> None:
        if rows not in ROWS:
            raise ValueError(f"rows must be one of {ROWS}")
        self.rows = rows
        # Layer checkpointing of grad-enabled forwards; None: $KDLENS_ATTR_CHECKPOINT per call.
        self.checkpoint = checkpoint
        self.loaded = loaded
        self.model = loaded.model
        dev = loaded.device
        self.batch = ScoringBatch(*(t.to(dev) for t in vars(batch).values()))
        self.embedding = self.model.get_input_embeddings()
        with torch.no_grad():
            self.prompt_embeds = self.embedding(self.batch.prompt_ids).detach()
            self.answer_embeds = None
            if not loaded.is_encoder_decoder:
                self.answer_embeds = self.embedding(self.batch.answer_ids).detach()
        self.forward_calls = 0

    def checkpoints(self, rows: int) -> bool:
        """Whether a grad-enabled forward of ``rows`` sequences checkpoints its layers."""
        if self.checkpoint is not None:
            return self.checkpoint
        length = self.batch.prompt_ids.shape[1] + self.batch.answer_ids.shape[1]
        return checkpoint_enabled(rows * length)

    def row_bytes(self, n: int) -> int:
        """Estimated bytes one extra backward row costs for ``n`` stacked copies of the batch.

        The forward's saved activations are shared by all rows; each row adds, while one layer
        is differentiated, gradients of the hidden states, attention projections and MLP
        activations, the attention scores' gradients, (float32) gradients of the kept logits,
        and below float32 a copy of the vocabulary projection's weight. Twice that, for
        allocator slack: the estimate only sizes chunks, so it errs large.
        """
        cfg = self.model.config

        def get(*keys: str, default: int) -> int:
            for k in keys:
                v = getattr(cfg, k, None)
                if isinstance(v, int) and v > 0:
                    return v
            return default

        hidden = get("hidden_size", "d_model", "n_embd", default=1024)
        inter = get("intermediate_size", "d_ff", "n_inner", default=4 * hidden)
        heads = get("num_attention_heads", "num_heads", "n_head", default=16)
        vocab = get("vocab_size", default=32000)
        seq = self.batch.prompt_ids.shape[1] + self.batch.answer_ids.shape[1]
        t = self.batch.answer_ids.shape[1] + 1
        width = self.prompt_embeds.element_size()
        layer = width * (seq * (6 * hidden + 3 * inter) + 2 * heads * seq * seq)
        logits = 4 * 2 * t * vocab
        # Below float32, the batched backward through the vocabulary projection copies its
        # [vocab, hidden] weight once per row (measured on CPU: SmolLM2 bf16 grew 55 MB a row,
        # fp32 did not), 467 MB a row for the Qwen pack: without this term a 1 GiB budget
        # let 32 such rows run at once (issue 9).
        head = vocab * hidden * width if width < 4 else 0
        return int(2 * n * (layer + logits + head))

    def rows_per_chunk(self, n: int, budget: int | None = None) -> int:
        """How many answer rows one vectorised backward may take within the memory budget."""
        budget = memory_budget_bytes() if budget is None else budget
        return max(1, budget // max(1, self.row_bytes(n)))

    @property
    def n_outputs(self) -> int:
        return 1 if self.rows == "answer" else self.batch.answer_ids.shape[1]

    def baseline(self, kind: str = "zero") -> Tensor:
        """Reference embeddings: ``zero`` vectors or the ``pad`` token's embedding."""
        if kind == "zero":
            return torch.zeros_like(self.prompt_embeds)
        if kind == "pad":
            pad = torch.full_like(self.batch.prompt_ids, self.loaded.tokenizer.pad_token_id)
            with torch.no_grad():
                return self.embedding(pad).detach()
        raise ValueError(f"unknown baseline {kind!r}; use zero or pad")

    def __call__(self, prompt_embeds: Tensor) -> Tensor:
        if torch.is_grad_enabled() and self.checkpoints(prompt_embeds.shape[0]):
            with checkpointed(self.model):
                return self._forward(prompt_embeds)
        return self._forward(prompt_embeds)

    def _forward(self, prompt_embeds: Tensor) -> Tensor:
        self.forward_calls += 1
        n = prompt_embeds.shape[0]
        b = self.batch
        pmask, aids, amask = (
            _tile(b.prompt_mask, n),
            _tile(b.answer_ids, n),
            _tile(b.answer_mask, n),
        )
        t = aids.shape[1]
        if self.loaded.is_encoder_decoder:
            dec_in = self.model._shift_right(aids) if hasattr(self.model, "_shift_right") else None
            if dec_in is None:
                start = self.model.config.decoder_start_token_id
                dec_in = torch.cat([torch.full_like(aids[:, :1], start), aids[:, :-1]], dim=1)
            out = self.model(
                inputs_embeds=prompt_embeds,
                attention_mask=pmask,
                decoder_input_ids=dec_in,
                decoder_attention_mask=amask,
                use_cache=False,
            )
            logits = out.logits
        else:
            embeds = torch.cat([prompt_embeds, _tile(self.answer_embeds, n)], dim=1)
            mask = torch.cat([pmask, amask], dim=1)
            # Left padding: positions count real tokens only, as in an unpadded run.
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            # Only the T positions that predict answer tokens need the (large) vocab projection.
            # Without padding, no mask: the model can take its plain causal attention path.
            out = self.model(
                inputs_embeds=embeds,
                attention_mask=None if bool(mask.all()) else mask,
                position_ids=pos,
                logits_to_keep=t + 1,
                use_cache=False,
            )
            logits = out.logits[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(-1, aids.unsqueeze(-1)).squeeze(-1)
        picked = picked * amask.to(picked.dtype)
        # "answer": one row, the whole answer's log-prob (one backward instead of T)
        return picked.sum(dim=1, keepdim=True) if self.rows == "answer" else picked
