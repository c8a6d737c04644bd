"""Multi-head attention whose projections are ops layers: the residual stream it reads and writes is editable.

``nn.MultiheadAttention`` ties three widths together in its code: the query's width (the
residual stream), ``embed_dim`` and the width of its projected queries, keys and values
(``num_heads × head_dim``); it reads its projections' weights directly, never calling them.
:class:`MultiheadAttentionWithNeuronOps` computes the same function with ``in_proj`` and
``out_proj`` as :class:`LinearWithNeuronOps` layers, called, and the heads' width read from
``in_proj`` rather than from the stream. So the stream's channels (``in_proj``'s columns,
``out_proj``'s rows) are edited like those of any residual stream, across every block. The
heads themselves (``in_proj``'s rows, ``out_proj``'s columns) pass through the attention
product, which surgery does not follow: editing them is refused, naming ``num_heads`` and
``head_dim``.

:func:`convert_to_ops` converts an ``nn.MultiheadAttention`` (conversion version 3) when it
projects queries, keys and values from one width with one packed weight and has no
``bias_k``/``bias_v``/``add_zero_attn``; the same ``Parameter`` objects are kept.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from weightslab.surgery.modules import LinearWithNeuronOps

__all__ = ["MultiheadAttentionWithNeuronOps", "convertible_attention"]


def convertible_attention(module: nn.Module) -> bool:
    """An ``nn.MultiheadAttention`` (not a subclass with its own forward) that this module computes exactly."""
    if not isinstance(module, nn.MultiheadAttention) or type(module).forward is not nn.MultiheadAttention.forward:
        return False
    m: Any = module
    return bool(m._qkv_same_embed_dim and m.in_proj_weight is not None and m.bias_k is None and m.bias_v is None
                and not m.add_zero_attn and not module._forward_pre_hooks and not module._forward_hooks)


class MultiheadAttentionWithNeuronOps(nn.Module):
    """``nn.MultiheadAttention`` with ``in_proj`` (queries, keys and values stacked) and ``out_proj`` as ops layers.

    Same arguments and results as ``nn.MultiheadAttention.forward``. Parameters:
    ``in_proj.weight`` (3·inner × stream), ``in_proj.bias``, ``out_proj.weight``
    (stream × inner), ``out_proj.bias``, with inner = ``num_heads × head_dim``.
    """

    def __init__(self, source: nn.MultiheadAttention) -> None:
        super().__init__()
        src: Any = source
        inner, stream = src.in_proj_weight.shape[0] // 3, src.in_proj_weight.shape[1]
        self.num_heads: int = src.num_heads
        self.dropout: float = src.dropout
        self.batch_first: bool = src.batch_first
        bias = src.in_proj_bias is not None
        self.in_proj = LinearWithNeuronOps(stream, 3 * inner, bias=bias, device="meta")
        self.out_proj = LinearWithNeuronOps(inner, stream, bias=src.out_proj.bias is not None, device="meta")
        # The same Parameter objects: an optimizer built on the plain model keeps working.
        self.in_proj._parameters["weight"] = src.in_proj_weight
        self.in_proj._parameters["bias"] = src.in_proj_bias
        for name, param in src.out_proj._parameters.items():
            self.out_proj._parameters[name] = param
        for layer in (self.in_proj, self.out_proj):
            layer._reset_neuron_state()
        self.train(source.training)

    # What code written for nn.MultiheadAttention reads of it. ``_qkv_same_embed_dim`` is False so that
    # nn.TransformerEncoderLayer's inference fast path, which reads the projections' weights directly and
    # assumes the stream as wide as the heads, never runs: it calls this module instead.
    _qkv_same_embed_dim = False
    bias_k = None
    bias_v = None
    add_zero_attn = False

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    @property
    def embed_dim(self) -> int:
        """The width of the stream it reads and writes (``nn.MultiheadAttention.embed_dim``)."""
        return self.in_proj.in_features

    @property
    def head_dim(self) -> int:
        """The width of one head's queries, keys and values."""
        return self.in_proj.out_features // 3 // self.num_heads

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        same = query is key and key is value
        if not batched:  # one sequence: a batch of one, at dim 1 as torch does
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:  # the attention below runs on (length, batch, width), as torch's does
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if same:
            key = value = query
        q, k, v = self._project(query, key, value)
        length, batch = q.shape[0], q.shape[1]
        heads = self.num_heads
        # (length, batch, heads·d) → (batch, heads, length, d), the layout torch's attention uses
        q, k, v = (t.reshape(t.shape[0], batch * heads, -1).transpose(0, 1).reshape(batch, heads, t.shape[0], -1)
                   for t in (q, k, v))
        mask = self._mask(attn_mask, key_padding_mask, batch, length, k.shape[2], q.dtype, is_causal)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout:
                weights = F.dropout(weights, dropout)
            out = torch.matmul(weights, v)
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        else:
            causal = is_causal and mask is None
            out = F.scaled_dot_product_attention(q, k, v, mask, dropout, causal)
        out = out.permute(2, 0, 1, 3).reshape(length * batch, -1)
        out = self.out_proj(out).view(length, batch, -1)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if query is key and key is value:  # self-attention: one projection, as torch's packed path
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
            return q, k, v
        return (self.in_proj(query).chunk(3, dim=-1)[0], self.in_proj(key).chunk(3, dim=-1)[1],
                self.in_proj(value).chunk(3, dim=-1)[2])

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        batch: int,
        length: int,
        source: int,
        dtype: torch.dtype,
        is_causal: bool,
    ) -> torch.Tensor | None:
        """One additive float mask of shape (batch, heads, length, source), or None."""

        def additive(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
            return mask.to(dtype)

        mask = None
        if attn_mask is not None:
            mask = additive(attn_mask)
            if mask.dim() == 3:
                mask = mask.view(batch, self.num_heads, length, source)
        elif is_causal:
            return None
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask
