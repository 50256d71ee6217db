"""Multi-head attention (``torch.nn.MultiheadAttention``) on fastdl's fused attention kernel.

The projections are :func:`fastdl.functional.linear`; the attention itself is
:func:`fastdl.functional.scaled_dot_product_attention` (the fused flash-attention kernel, memory
linear in the sequence lengths) whenever the weights are not asked for (``need_weights=False``).
Asking for the weights runs the composed formula, which has to store them (a declared fallback,
counted in ``fastdl.backend_info()``).

>>> import fastdl
>>> mha = fastdl.nn.MultiheadAttention(16, 4, batch_first=True)
>>> x = fastdl.randn(2, 5, 16)
>>> out, weights = mha(x, x, x, need_weights=False)
>>> out.shape, weights
((2, 5, 16), None)
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..backend import array_module
from ..tensor import Tensor
from . import init
from .layers import Linear, _empty
from .module import Module

__all__ = ["MultiheadAttention"]


class MultiheadAttention(Module):
    """Multi-head attention: softmax(Q_h·K_hᵀ/√head_dim + masks)·V_h per head, concatenated and
    projected, with PyTorch's arguments, parameter names, initialisation and mask conventions.

    Shapes (E = embed_dim, N batch, L target and S source length; ``batch_first`` swaps the first
    two dimensions; unbatched inputs drop N): query (L, N, E), key (S, N, kdim), value (S, N, vdim)
    → attn_output (L, N, E) and attn_weights (N, L, S) averaged over heads, (N, num_heads, L, S)
    with ``average_attn_weights=False``, or None with ``need_weights=False``.

    Masks, as in PyTorch: ``key_padding_mask`` (N, S) and ``attn_mask`` (L, S) or
    (N·num_heads, L, S) are boolean (True = the key is *masked out*, the opposite of
    ``scaled_dot_product_attention``) or additive floats. ``is_causal`` is a hint that
    ``attn_mask`` is the causal mask (so it needs ``attn_mask``); without a ``key_padding_mask``
    and weights the kernel then applies the causal mask itself and skips the blocks above the
    diagonal. Rows whose masks remove every key give zeros (PyTorch gives NaN there).

    ``need_weights=False`` runs the fused kernel; ``need_weights=True`` (PyTorch's default) runs
    the composed formula that returns the weights. Dropout (``dropout``) acts on the attention
    weights in training mode only.

    >>> import fastdl
    >>> mha = fastdl.nn.MultiheadAttention(8, 2)
    >>> q = fastdl.randn(4, 3, 8)                       # (L, N, E)
    >>> kv = fastdl.randn(6, 3, 8)                      # (S, N, E)
    >>> out, w = mha(q, kv, kv)
    >>> out.shape, w.shape
    ((4, 3, 8), (3, 4, 6))
    >>> sorted(mha.state_dict())
    ['in_proj_bias', 'in_proj_weight', 'out_proj.bias', 'out_proj.weight']
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim=None, vdim=None,
                 batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be positive, got embed_dim={embed_dim} "
                             f"num_heads={num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1), got {dropout}")
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if self._qkv_same_embed_dim:
            self.in_proj_weight = _empty(3 * embed_dim, embed_dim, dtype=dtype)
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = _empty(embed_dim, embed_dim, dtype=dtype)
            self.k_proj_weight = _empty(embed_dim, self.kdim, dtype=dtype)
            self.v_proj_weight = _empty(embed_dim, self.vdim, dtype=dtype)
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = _empty(3 * embed_dim, dtype=dtype)
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        if add_bias_kv:
            self.bias_k = _empty(1, 1, embed_dim, dtype=dtype)
            self.bias_v = _empty(1, 1, embed_dim, dtype=dtype)
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            init.constant_(self.in_proj_bias, 0.0)
            init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    def _fail(self, message: str) -> ValueError:
        return ValueError(f"MultiheadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}"
                          f"{'' if self._qkv_same_embed_dim else f', kdim={self.kdim}, vdim={self.vdim}'}"
                          f"{', batch_first=True' if self.batch_first else ''}) {message}")

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        shapes = f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        batched = query.ndim == 3
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise self._fail(f"needs 3-D (batched) or 2-D (unbatched) query, key and value, got {shapes}")
        if batched and not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        elif not batched:
            query, key, value = (x.unsqueeze(0) for x in (query, key, value))
        N, L, E = query.shape
        S = key.shape[1]
        if (E != self.embed_dim or key.shape[-1] != self.kdim or value.shape[-1] != self.vdim
                or key.shape[:2] != value.shape[:2] or key.shape[0] != N):
            raise self._fail(f"got {shapes}: need query (…, {self.embed_dim}), key (…, {self.kdim}) and value "
                             f"(…, {self.vdim}) with equal batch and equal key/value lengths")
        if is_causal and attn_mask is None:
            raise self._fail("got is_causal=True without attn_mask: as in PyTorch, is_causal is a hint that "
                             "attn_mask is the causal mask (pass it, or call scaled_dot_product_attention)")
        kpm = self._mask(key_padding_mask, "key_padding_mask", (N, S) if batched else (S,), query.dtype)
        if kpm is not None and not batched:
            kpm = kpm.unsqueeze(0)
        am = self._mask(attn_mask, "attn_mask", ((L, S), (N * self.num_heads, L, S)), query.dtype)

        q, k, v = self._project(query, key, value)
        if self.bias_k is not None:
            k = F.cat([k, self.bias_k.expand(N, 1, E)], dim=1)
            v = F.cat([v, self.bias_v.expand(N, 1, E)], dim=1)
            kpm, am = self._pad_key(kpm), self._pad_key(am)
        if self.add_zero_attn:
            k = F.cat([k, Tensor(array_module(k.data).zeros((N, 1, E), k.dtype))], dim=1)
            v = F.cat([v, Tensor(array_module(v.data).zeros((N, 1, E), v.dtype))], dim=1)
            kpm, am = self._pad_key(kpm), self._pad_key(am)
        H, hd, S = self.num_heads, self.head_dim, k.shape[1]
        q, k, v = (x.reshape(N, x.shape[1], H, hd).transpose(1, 2) for x in (q, k, v))   # (N, H, ·, hd)

        causal = is_causal and kpm is None and not need_weights
        mask = None if causal else self._merge(am, kpm, N, L, S, query.dtype)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            backend.note_fallback("attention", "need_weights")
            out, weights = F._attention_composed("MultiheadAttention", q, k, v, mask, dropout_p, False, None, False)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal=causal), None
        out = self.out_proj(out.transpose(1, 2).reshape(N, L, E))
        if batched and not self.batch_first:
            out = out.transpose(0, 1)
        elif not batched:
            out = out.squeeze(0)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    def _project(self, query, key, value):
        """q, k, v (N, ·, E): one packed product for self-attention, three otherwise."""
        E, b = self.embed_dim, self.in_proj_bias
        if self._qkv_same_embed_dim and query is key and key is value:
            return F.linear(query, self.in_proj_weight, b).chunk(3, dim=-1)
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            weights = (w[:E], w[E:2 * E], w[2 * E:])
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
        return tuple(F.linear(x, w, bb) for x, w, bb in zip((query, key, value), weights, biases))

    def _mask(self, mask, name, shapes, dtype):
        """A mask as a Tensor after checking its dtype (bool or the query's) and shape."""
        if mask is None:
            return None
        if not isinstance(mask, Tensor):
            raise TypeError(f"MultiheadAttention: {name} must be a Tensor, got {type(mask).__name__}")
        if mask.dtype != np.bool_ and mask.dtype != dtype:
            raise TypeError(f"MultiheadAttention: {name} must be bool or {dtype} (like query), got {mask.dtype} "
                            f"{tuple(mask.shape)}")
        allowed = shapes if isinstance(shapes[0], tuple) else (shapes,)
        if tuple(mask.shape) not in allowed:
            raise self._fail(f"got {name} of shape {tuple(mask.shape)}; expected " + " or ".join(map(str, allowed)))
        return mask

    @staticmethod
    def _pad_key(mask):
        """One more key column that takes part (False for a boolean mask, 0 for an additive one)."""
        if mask is None:
            return None
        if mask.dtype == np.bool_:
            xp = array_module(mask.data)
            return Tensor(xp.concatenate([mask.data, xp.zeros(mask.shape[:-1] + (1,), bool)], axis=-1))
        return F.pad(mask, (0, 1))

    def _merge(self, am, kpm, N, L, S, dtype):
        """attn_mask and key_padding_mask as one mask for scaled_dot_product_attention, broadcasting
        to (N, num_heads, L, S): boolean "takes part" when both are boolean, else additive."""
        masks = []
        if am is not None:
            masks.append(am.reshape(N, self.num_heads, L, S) if am.ndim == 3 else am)
        if kpm is not None:
            masks.append(kpm.reshape(N, 1, 1, S))
        if not masks:
            return None
        if all(m.dtype == np.bool_ for m in masks):
            keep = F.logical_not(masks[0])
            for m in masks[1:]:
                keep = F.logical_and(keep, F.logical_not(m))
            return keep
        total = None
        for m in masks:
            if m.dtype == np.bool_:
                xp = array_module(m.data)
                m = Tensor(xp.where(m.data, -xp.inf, 0.0).astype(dtype))
            total = m if total is None else total + m
        return total
