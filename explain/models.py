"""Load a model from a spec string: a pinned pack name, a local folder, or a hub id.

One call returns a :class:`LoadedModel` (model, tokenizer, family, device, dtype). Loads are
safetensors or GGUF only (no pickles) and ``trust_remote_code`` stays off.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import packs
from .errors import ModelSpecError

DECODER = "decoder-only"
ENCODER_DECODER = "encoder-decoder"


@dataclass
class LoadedModel:
    spec: str
    model: torch.nn.Module
    tokenizer: object
    family: str  # DECODER or ENCODER_DECODER
    device: torch.device
    dtype: torch.dtype
    use_chat_template: bool = True
    info: dict = field(default_factory=dict)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family == ENCODER_DECODER

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def max_length(self) -> int:
        """Context length: the model's position limit, else the tokenizer's, else 512."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            val = getattr(cfg, key, None)
            if isinstance(val, int) and val > 0:
                return val
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            return tok_max
        return 512

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "family": self.family,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "n_params": self.n_params,
            "chat_template": self.use_chat_template and self.has_chat_template,
            **self.info,
        }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None, n_params: int, device: torch.device):
    """'auto': bf16 for models over 1B parameters (CPU, or a GPU that supports it), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        big = n_params > 1e9
        if big and (device.type == "cpu" or torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float32
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in table:
        raise ModelSpecError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16")
    return table[dtype]


def _hub_offline_message(spec: str) -> str:
    return (
        f"cannot reach the Hugging Face hub to load {spec!r}; offline, use a local folder or "
        f"a pack: {', '.join(packs.PACKS)}"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP probe, so offline users get an answer at once instead of retries."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_spec(spec: str, progress: packs.Progress | None = None) -> tuple[str, dict]:
    """Map a spec to something ``from_pretrained`` takes, plus info for the record."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelSpecError("empty model spec; give a pack name, a local folder or a hub id")
    if spec in packs.PACKS:
        folder = packs.ensure(spec, progress or (lambda m, f: None))
        return str(folder), {"source": "pack", "pack_sha256": packs.PACKS[spec].sha256}
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelSpecError(f"{spec!r} is not a model folder (no config.json)")
        return str(path), {"source": "folder"}
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_like_path or " " in spec:
        raise ModelSpecError(
            f"unknown model spec {spec!r}: not a pack ({', '.join(packs.PACKS)}), "
            "not an existing folder, not a hub id"
        )
    return spec, {"source": "hub"}


def load_model(
    spec: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "auto",
    use_chat_template: bool = True,
    progress: packs.Progress | None = None,
) -> LoadedModel:
    """Load model and tokenizer named by ``spec``; parameters frozen, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    where, info = resolve_spec(spec, progress)
    dev = torch.device(device) if device else default_device()
    if progress:
        progress(f"loading {spec}", 0.0)
    kwargs = {"trust_remote_code": False}
    if info["source"] == "hub":
        from transformers.utils import cached_file

        try:  # already in the local hub cache: no network needed
            cached_file(spec, "config.json", local_files_only=True)
            kwargs["local_files_only"] = True
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
                raise ModelSpecError(_hub_offline_message(spec)) from None
    try:
        config = AutoConfig.from_pretrained(where, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except OSError as e:
        if info["source"] == "hub":
            msg = str(e)
            if "not a valid model identifier" in msg or "does not appear" in msg:
                raise ModelSpecError(f"unknown model spec {spec!r}: not found on the hub") from None
            raise ModelSpecError(_hub_offline_message(spec)) from None
        raise ModelSpecError(f"cannot load {spec!r}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise ModelSpecError(f"cannot load {spec!r}: {str(e).splitlines()[0]}") from None
    family = ENCODER_DECODER if getattr(config, "is_encoder_decoder", False) else DECODER
    auto = AutoModelForSeq2SeqLM if family == ENCODER_DECODER else AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a sub-second load needs no bar; fetches show their own
    try:
        # loading info: transformers would otherwise fill missing weights with random values
        model, loading = auto.from_pretrained(
            where, use_safetensors=True, output_loading_info=True, **kwargs
        )
    except (OSError, ValueError) as e:
        raise ModelSpecError(
            f"cannot load weights of {spec!r} (safetensors only): {str(e).splitlines()[0]}"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    mismatched = [k if isinstance(k, str) else k[0] for k in loading.get("mismatched_keys", [])]
    missing = sorted(loading.get("missing_keys", [])) + mismatched
    packs.check_weight_keys(repr(spec), missing, sorted(loading.get("unexpected_keys", [])))
    n_params = sum(p.numel() for p in model.parameters())
    torch_dtype = resolve_dtype(dtype, n_params, dev)
    model.to(device=dev, dtype=torch_dtype)
    if progress:
        progress(f"{spec} loaded on {dev} ({n_params / 1e6:.0f}M parameters)", 1.0)
    return prepare(spec, model, tokenizer, dev, torch_dtype, use_chat_template, info)


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_head(model: torch.nn.Module) -> None:
    """Give the vocabulary projection a contiguous input.

    ``logits_to_keep`` (generation's prefill, attribution, training) slices the last positions
    of a ``[B, T, D]`` batch: a strided view, for which ``F.linear`` on CPU falls back to a
    batched matmul that first copies the ``[V, D]`` weight once per row (``[B, D, V]``: 1.9 GB
    for four Qwen rows). That copy took 55% of a Qwen forward's time; a contiguous input is a
    plain matmul (bench/extract_speed.py). Idempotent.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_kdlens_contiguous", False):
        return
    head.register_forward_pre_hook(_contiguous_input)
    head._kdlens_contiguous = True


def prepare(
    spec: str,
    model: torch.nn.Module,
    tokenizer: object,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    use_chat_template: bool = True,
    info: dict | None = None,
) -> LoadedModel:
    """Wrap an in-memory model (tests, training) the same way ``load_model`` does."""
    model.eval()
    contiguous_head(model)
    for p in model.parameters():
        p.requires_grad_(False)  # attribution needs input-embedding gradients only
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    family = ENCODER_DECODER if getattr(model.config, "is_encoder_decoder", False) else DECODER
    dev = device or next(model.parameters()).device
    return LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        family=family,
        device=dev,
        dtype=dtype or next(model.parameters()).dtype,
        use_chat_template=use_chat_template,
        info=dict(info or {}),
    )


class ModelCache:
    """Models shared by the app and CLI: each spec loads once; switching frees the old one."""

    def __init__(self, capacity: int = 2, loader: Callable[..., LoadedModel] = load_model):
        self.capacity = capacity
        self.loader = loader
        self._models: dict[tuple, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, spec: str, **kwargs) -> LoadedModel:
        key = (spec, tuple(sorted((k, str(v)) for k, v in kwargs.items() if k != "progress")))
        with self._lock:
            if key in self._models:
                self._models[key] = self._models.pop(key)  # most recently used last
                return self._models[key]
            # Load first: a mistyped spec must not cost the models already loaded.
            loaded = self.loader(spec, **kwargs)
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.pop(next(iter(self._models)))
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            return loaded

    def loaded_specs(self) -> list[str]:
        return [k[0] for k in self._models]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            gc.collect()
