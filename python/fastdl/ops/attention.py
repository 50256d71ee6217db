"""Scaled-dot-product attention on the fused native kernel (``fastdl._C.attention_forward`` /
``attention_backward``, FlashAttention-2 style).

ScaledDotProductAttentionFn: (query (..., L, E), key (..., S, E), value (..., S, Ev), attn_mask
(broadcastable to (..., L, S), bool or additive, or None)) → out (..., L, Ev). The forward keeps only
its inputs, the output and the row log-sum-exp (linear in L), never the L×S probabilities; the
backward recomputes them block by block and returns every gradient in one native call, including
the additive mask's when it requires grad. Dropout is fused: its mask is a pure function of the
``seed`` drawn by the caller, so the backward regenerates it.
"""
from __future__ import annotations

from .. import kernels
from ..tensor import Function

_OP = "scaled_dot_product_attention"


class ScaledDotProductAttentionFn(Function):
    @staticmethod
    def forward(ctx, query, key, value, attn_mask, is_causal, scale, dropout_p, seed, enable_gqa):
        out, lse = kernels.attention_forward(query, key, value, attn_mask, is_causal=is_causal, scale=scale,
                                             dropout_p=dropout_p, seed=seed, enable_gqa=enable_gqa, _op=_OP)
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(query, key, value, attn_mask, out, lse)
            ctx.options = dict(is_causal=is_causal, scale=scale, dropout_p=dropout_p, seed=seed, enable_gqa=enable_gqa)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, attn_mask, out, lse = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = kernels.attention_backward(grad_out, query, key, value, out, lse, attn_mask, mask_grad=needs[3],
                                           _op=_OP, **ctx.options)
        grad_mask = grads[3] if needs[3] else None
        return tuple(g if need else None for g, need in zip(grads[:3], needs)) + (grad_mask,) + (None,) * 5
