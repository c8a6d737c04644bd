"""Window attention (Swin, Swin v2, MaxViT) whose heads' width is read from its projections, not from the stream.

torchvision's ``ShiftedWindowAttention`` (Swin), ``ShiftedWindowAttentionV2`` (Swin v2) and MaxViT's
``RelativePositionalMultiHeadAttention`` split the projected queries, keys and values into heads
with a width they derive from the residual stream (``C // num_heads``) or fix at construction
(MaxViT's ``head_dim``, and its output reshaped to the stream's width ``D``). So the stream could
not change width without changing every head. The modules here compute the same function (the
same ops in the same order: bit-identical) with the heads' width read from the query/key/value
projection (``qkv`` / ``to_qkv`` rows ÷ 3 ÷ heads) and the attention output as wide as the heads,
so the residual stream (``qkv``'s columns, ``proj`` / ``merge`` rows) is edited like any other, across
every block that reads it; the attention scale is the model's constant (kept when widths change).
The heads themselves (the projection's rows) pass through the attention product and stay pinned.

:func:`~weightslab.surgery.convert.convert_to_ops` converts these modules from conversion version 5
on. The converted module keeps the original's submodules (its already converted ``qkv``, ``proj``,
``cpb_mlp`` / ``to_qkv``, ``merge``), parameters and buffers, under the same names and in the same
order: checkpoint keys and ``model.layers`` indices are those of version 4.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from weightslab.surgery.heads import trace_heads

__all__ = ["RelativeAttentionWithNeuronOps", "WindowAttentionWithNeuronOps", "convertible_window_attention",
           "window_attention_ops"]


def _torchvision_classes() -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]] | None:
    try:
        from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
        from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return ShiftedWindowAttention, ShiftedWindowAttentionV2, RelativePositionalMultiHeadAttention


def convertible_window_attention(module: nn.Module) -> bool:
    """A torchvision Swin / Swin v2 / MaxViT attention module (exactly that class, no hooks) computed exactly here."""
    classes = _torchvision_classes()
    return not (classes is None or type(module) not in classes or module._forward_pre_hooks
                or module._forward_hooks)


def window_attention_ops(module: nn.Module) -> nn.Module:
    """The converted module of a :func:`convertible_window_attention` module (sharing its submodules and tensors)."""
    classes = _torchvision_classes()
    assert classes is not None
    if type(module) is classes[2]:
        return RelativeAttentionWithNeuronOps(module)
    return WindowAttentionWithNeuronOps(module, v2=type(module) is classes[1])


class _Converted(nn.Module):
    """What the converted attention modules share: the widths they were converted at."""

    def _widths(self) -> tuple[int, ...]:
        raise NotImplementedError

    def unchanged(self) -> bool:
        """Whether its widths are those it was converted at (it can go back to the original module)."""
        return self._widths() == self.__dict__["_converted_widths"]


class WindowAttentionWithNeuronOps(_Converted):
    """torchvision's ``ShiftedWindowAttention`` (``v2``: ``ShiftedWindowAttentionV2``) with a free stream width.

    Same attributes, submodules (``qkv``, ``proj``, and ``cpb_mlp`` for v2), parameters and buffers as
    the source module. ``scale`` is the source's ``(C // num_heads) ** -0.5`` (Swin v1).
    """

    relative_position_bias_table: torch.Tensor
    relative_position_index: torch.Tensor
    relative_coords_table: torch.Tensor
    logit_scale: torch.Tensor

    def __init__(self, source: nn.Module, v2: bool) -> None:
        super().__init__()
        src: Any = source
        self.window_size: list[int] = list(src.window_size)
        self.shift_size: list[int] = list(src.shift_size)
        self.attention_dropout: float = src.attention_dropout
        self.dropout: float = src.dropout
        self.v2 = v2
        self.qkv = src.qkv
        self.proj = src.proj
        # The source's own tensors, in its order (parameters, then buffers).
        for name, param in src._parameters.items():
            self.register_parameter(name, param)
        for name, buffer in src._buffers.items():
            self.register_buffer(name, buffer, persistent=name not in src._non_persistent_buffers_set)
        if v2:
            self.cpb_mlp = src.cpb_mlp
        self.scale = float((self.qkv.in_features // src.num_heads) ** -0.5)
        self.train(source.training)
        self.__dict__["_converted_widths"] = self._widths()

    def _widths(self) -> tuple[int, ...]:
        return (self.qkv.in_features, self.qkv.out_features, self.proj.in_features, self.proj.out_features,
                self.num_heads)

    @property
    def num_heads(self) -> int:
        """The number of heads: read from the per-head tensor (so an edit or a checkpoint sets it)."""
        return int(self.logit_scale.shape[0] if self.v2 else self.relative_position_bias_table.shape[1])

    @property
    def head_dim(self) -> int:
        """The width of one head's queries, keys and values."""
        return self.qkv.out_features // 3 // self.num_heads

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, window_size={self.window_size}"

    def get_relative_position_bias(self) -> torch.Tensor:
        """The bias added to every head's attention scores (as torchvision computes it)."""
        if self.v2:
            table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        else:
            table = self.relative_position_bias_table
        n = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index].view(n, n, -1)  # type: ignore[index]
        bias = bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trace = self.qkv._layer_state.trace
        if trace is not None:  # a dependency trace: the heads are recorded, the attention product is not computed
            per_head = ("logit_scale", 0) if self.v2 else ("relative_position_bias_table", 1)
            mlp = (self.cpb_mlp, self.relative_coords_table, self.cpb_mlp[-1]) if self.v2 else None
            return trace_heads(trace, self, x, self.qkv, self.proj, per_head, mlp)
        return self._attend(x, self.get_relative_position_bias())

    def _attend(self, input: torch.Tensor, relative_position_bias: torch.Tensor) -> torch.Tensor:
        # torchvision.models.swin_transformer.shifted_window_attention, with the heads' width read from qkv.
        window_size, num_heads = self.window_size, self.num_heads
        B, H, W, _ = input.shape
        pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
        pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
        x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
        _, pad_H, pad_W, C = x.shape
        shift_size = self.shift_size.copy()
        if window_size[0] >= pad_H:
            shift_size[0] = 0
        if window_size[1] >= pad_W:
            shift_size[1] = 0
        if sum(shift_size) > 0:
            x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
        num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
        x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
        qkv_bias = self.qkv.bias
        if self.v2 and qkv_bias is not None:
            qkv_bias = qkv_bias.clone()
            length = qkv_bias.numel() // 3
            qkv_bias[length: 2 * length].zero_()
            qkv = F.linear(x, self.qkv.weight, qkv_bias)
        else:
            qkv = self.qkv(x)
        qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.v2:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            logit_scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
            attn = attn * logit_scale
        else:
            q = q * self.scale
            attn = q.matmul(k.transpose(-2, -1))
        attn = attn + relative_position_bias
        if sum(shift_size) > 0:
            attn_mask = x.new_zeros((pad_H, pad_W))
            h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
            w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
            count = 0
            for h in h_slices:
                for w in w_slices:
                    attn_mask[h[0]: h[1], w[0]: w[1]] = count
                    count += 1
            attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
            attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
            attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
            attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
            attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, num_heads, x.size(1), x.size(1))
        attn = F.softmax(attn, dim=-1)
        attn = F.dropout(attn, p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), -1)  # as wide as the heads
        x = self.proj(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], -1)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, -1)
        if sum(shift_size) > 0:
            x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


class RelativeAttentionWithNeuronOps(_Converted):
    """MaxViT's ``RelativePositionalMultiHeadAttention`` with a free stream width.

    Same attributes (``n_heads``, ``size``, ``max_seq_len``, ``scale_factor``: the model's constant),
    submodules (``to_qkv``, ``merge``), parameter and buffer as the source module; ``head_dim`` is read
    from ``to_qkv``.
    """

    relative_position_bias_table: torch.Tensor
    relative_position_index: torch.Tensor

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        src: Any = source
        self.size: int = src.size
        self.max_seq_len: int = src.max_seq_len
        self.scale_factor: float = src.scale_factor
        self.to_qkv = src.to_qkv
        self.merge = src.merge
        for name, param in src._parameters.items():
            self.register_parameter(name, param)
        for name, buffer in src._buffers.items():
            self.register_buffer(name, buffer, persistent=name not in src._non_persistent_buffers_set)
        self.train(source.training)
        self.__dict__["_converted_widths"] = self._widths()

    def _widths(self) -> tuple[int, ...]:
        return (self.to_qkv.in_features, self.to_qkv.out_features, self.merge.in_features, self.merge.out_features,
                self.n_heads)

    @property
    def n_heads(self) -> int:
        """The number of heads: read from the relative position bias table (so an edit or a checkpoint sets it)."""
        return int(self.relative_position_bias_table.shape[1])

    @property
    def head_dim(self) -> int:
        """The width of one head's queries, keys and values."""
        return self.to_qkv.out_features // 3 // self.n_heads

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, head_dim={self.head_dim}, max_seq_len={self.max_seq_len}"

    def get_relative_positional_bias(self) -> torch.Tensor:
        bias_index = self.relative_position_index.view(-1)  # type: ignore[operator]
        relative_bias = self.relative_position_bias_table[bias_index].view(self.max_seq_len, self.max_seq_len, -1)
        relative_bias = relative_bias.permute(2, 0, 1).contiguous()
        return relative_bias.unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trace = self.to_qkv._layer_state.trace
        if trace is not None:  # a dependency trace: the heads are recorded, the attention product is not computed
            return trace_heads(trace, self, x, self.to_qkv, self.merge, ("relative_position_bias_table", 1))
        B, G, P, _ = x.shape
        H = self.n_heads
        qkv = self.to_qkv(x)
        q, k, v = torch.chunk(qkv, 3, dim=-1)
        q = q.reshape(B, G, P, H, -1).permute(0, 1, 3, 2, 4)
        k = k.reshape(B, G, P, H, -1).permute(0, 1, 3, 2, 4)
        v = v.reshape(B, G, P, H, -1).permute(0, 1, 3, 2, 4)
        k = k * self.scale_factor
        dot_prod = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        pos_bias = self.get_relative_positional_bias()
        dot_prod = F.softmax(dot_prod + pos_bias, dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", dot_prod, v)
        out = out.permute(0, 1, 3, 2, 4).reshape(B, G, P, -1)  # as wide as the heads
        return self.merge(out)
