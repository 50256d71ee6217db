"""Recurrent layers with PyTorch's names, arguments, parameter names and semantics: LSTM, GRU, RNN
and their one-step cells.

``LSTM`` and ``GRU`` run each layer and direction as one call of fastdl's fused whole-sequence
kernels (``F.lstm``, ``F.gru``); ``RNN`` and ``LSTM(proj_size > 0)`` are composed from ops per time
step (fallbacks declared in ``fastdl.backend_info()``). Parameters are named as PyTorch's
(``weight_ih_l0``, ``bias_hh_l1_reverse``, ``weight_hr_l0``), so state dicts map one to one.

Variable-length batches: ``forward(input, hx=None, lengths=None)`` takes the length of each
sequence of a padded batch. Outputs past a sequence's length are zero, ``h_n``/``c_n`` hold each
sequence's state at its own last step, and the reverse direction starts there, exactly what
PyTorch computes for ``pack_padded_sequence`` → LSTM → ``pad_packed_sequence``. Internally the
batch is ordered by length and every layer runs once per stretch of steps with the same active
sequences.

>>> import fastdl
>>> from fastdl import nn
>>> lstm = nn.LSTM(10, 20, num_layers=2, batch_first=True)
>>> out, (h, c) = lstm(fastdl.randn(3, 5, 10), lengths=[5, 2, 4])
>>> out.shape, h.shape, float(out[1, 2:].abs().sum())
((3, 5, 20), (2, 3, 20), 0.0)
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..backend import note_fallback
from ..ops import lstm as _lstm
from ..tensor import Tensor, is_grad_enabled
from . import init
from .module import Module, Parameter

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _parameter(*shape, dtype=None) -> Parameter:
    return Parameter(Tensor(np.empty(shape, dtype=np.dtype(dtype or np.float32))))


def _shape(x) -> tuple:
    return tuple(x.shape)


# ---- variable lengths -------------------------------------------------------------------------------

class _Lengths:
    """A padded batch's lengths, ordered longest first: the permutation, its inverse, the stretches
    of steps with the same active sequences (a prefix of the ordered batch) and the index that
    reverses each sequence within its own length."""

    def __init__(self, lengths, T: int, B: int, layer: Module):
        values = np.asarray(lengths.numpy() if isinstance(lengths, Tensor) else lengths)
        if values.shape != (B,) or values.dtype.kind not in "iu" and not np.all(values == np.round(values)):
            raise layer._error(f"lengths must be B = {B} integers, got shape {values.shape}")
        values = values.astype(np.int64)
        if values.size and (values.min() < 1 or values.max() > T):
            raise layer._error(f"lengths must lie in [1, T = {T}], got min {values.min()}, max {values.max()}")
        self.order = np.argsort(-values, kind="stable")
        self.inverse = np.argsort(self.order, kind="stable")
        self.sorted = values[self.order]
        bounds = sorted(set(self.sorted.tolist()))
        # (t0, t1, active): steps t0 ≤ t < t1 run on the first `active` sequences of the ordered batch.
        self.stretches = []
        t0 = 0
        for t1 in bounds:
            self.stretches.append((t0, t1, int((self.sorted >= t1).sum())))
            t0 = t1
        t = np.arange(T)[:, None]
        self.reverse = np.where(t < self.sorted[None, :], self.sorted[None, :] - 1 - t, t)  # (T, B)


def _reverse_in_length(x: Tensor, lengths: _Lengths | None) -> Tensor:
    """Each sequence of x (T, B, F) reversed within its own length (the whole of T without lengths)."""
    if lengths is None:
        return F.flip(x, (0,))
    index = np.broadcast_to(lengths.reverse[:, :, None], x.shape)
    return F.gather(x, 0, Tensor(np.ascontiguousarray(index)))


def _run_in_stretches(run, x: Tensor, state: tuple, lengths: _Lengths | None):
    """``run(x, state) → (y, state)`` over the whole sequence, or stretch by stretch on the active
    prefix of the length-ordered batch; outputs past each length are zero."""
    if lengths is None:
        return run(x, state)
    B = x.shape[1]
    outputs = []
    for t0, t1, active in lengths.stretches:
        part = tuple(s[:active] for s in state)
        y, new = run(x[t0:t1, :active], part)
        if active < B:
            y = F.cat([y, Tensor(np.zeros((t1 - t0, B - active) + y.shape[2:], y.dtype))], dim=1)
            new = tuple(F.cat([n, s[active:]], dim=0) for n, s in zip(new, state))
        outputs.append(y)
        state = new
    return (outputs[0] if len(outputs) == 1 else F.cat(outputs, dim=0)), state


# ---- sequence layers ----------------------------------------------------------------------------

class RNNBase(Module):
    """The multi-layer, optionally bidirectional recurrent layer behind LSTM, GRU and RNN."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None):
        super().__init__()
        for name, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                                 ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{type(self).__name__}: {name} must be an integer >= {low}, got {value!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"{type(self).__name__}: dropout must be a number in [0, 1], got {dropout!r}")
        if proj_size and mode != "LSTM":
            raise ValueError(f"{type(self).__name__}: proj_size is only supported by LSTM")
        if proj_size >= hidden_size:
            raise ValueError(f"{type(self).__name__}: proj_size {proj_size} must be smaller than hidden_size "
                             f"{hidden_size}")
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), int(proj_size)
        gates = _GATES[mode]
        out_size = proj_size or hidden_size
        directions = 2 if bidirectional else 1
        self._flat_weights_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else out_size * directions
            for suffix in ("", "_reverse")[:directions]:
                shapes = [("weight_ih", (gates * hidden_size, layer_input)),
                          ("weight_hh", (gates * hidden_size, out_size))]
                if bias:
                    shapes += [("bias_ih", (gates * hidden_size,)), ("bias_hh", (gates * hidden_size,))]
                if proj_size:
                    shapes.append(("weight_hr", (proj_size, hidden_size)))
                for kind, shape in shapes:
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, _parameter(*shape, dtype=dtype))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias U(−1/√hidden_size, 1/√hidden_size), as PyTorch."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in self._flat_weights_names:
            init.uniform_(getattr(self, name), -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if not self.bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.bidirectional:
            text += ", bidirectional=True"
        if self.mode.startswith("RNN") and self.mode != "RNN_TANH":
            text += ", nonlinearity='relu'"
        return text

    def _weights(self, layer: int, suffix: str) -> tuple:
        g = lambda kind: getattr(self, f"{kind}_l{layer}{suffix}")  # noqa: E731
        biases = (g("bias_ih"), g("bias_hh")) if self.bias else (None, None)
        return (g("weight_ih"), g("weight_hh")) + biases + ((g("weight_hr"),) if self.proj_size else ())

    def _runner(self, weights):
        """run(x (T, B, in), state) → (y (T, B, out), state) for one layer and direction."""
        mode = self.mode
        if mode == "LSTM" and not self.proj_size:
            return lambda x, s: F.lstm(x, s, *weights)
        if mode == "LSTM":
            note_fallback("lstm", "LSTM proj_size > 0")
            return lambda x, s: _lstm_projected(x, s, *weights)
        if mode == "GRU":
            return lambda x, s: _single_state(F.gru(x, s[0], *weights))
        nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
        return lambda x, s: _single_state(F.rnn(x, s[0], *weights, nonlinearity=nonlinearity))

    def _check_input(self, input):
        if not isinstance(input, Tensor):
            raise TypeError(f"{self._get_name()}({self.extra_repr()}): input must be a Tensor, got "
                            f"{type(input).__name__}")
        if input.ndim not in (2, 3):
            raise self._error(f"got input of shape {_shape(input)}: expected 3-D "
                              f"({'B, T' if self.batch_first else 'T, B'}, input_size) or 2-D (T, input_size)")
        if input.shape[-1] != self.input_size:
            raise self._error(f"got input of shape {_shape(input)}: last dimension {input.shape[-1]} != "
                              f"input_size {self.input_size}")
        if input.dtype != self.weight_ih_l0.dtype:
            raise TypeError(f"{self._get_name()}({self.extra_repr()}): input dtype {input.dtype} differs from the "
                            f"parameters' {self.weight_ih_l0.dtype}; convert with .to(dtype)")

    def _check_state(self, state, name: str, shape: tuple, batched: bool):
        """A given initial state, checked; unbatched ones get the batch dimension."""
        if not isinstance(state, Tensor):
            raise TypeError(f"{self._get_name()}({self.extra_repr()}): {name} must be a Tensor, got "
                            f"{type(state).__name__}")
        expected = shape if batched else (shape[0], shape[2])
        if _shape(state) != expected:
            raise self._error(f"got {name} of shape {_shape(state)}, expected {expected} "
                              "(num_layers * num_directions, batch, hidden)")
        return state if batched else F.unsqueeze(state, 1)

    def forward(self, input, hx=None, lengths=None):
        """input (T, B, input_size) ((B, T, input_size) with batch_first; or (T, input_size)),
        hx the initial states (num_layers·directions, B, ·) or None (zeros), lengths (B,) or None →
        output (T, B, directions·out) and the final states (for LSTM the pair (h_n, c_n))."""
        self._check_input(input)
        batched = input.ndim == 3
        x = input if batched else F.unsqueeze(input, 1)
        if self.batch_first and batched:
            x = F.transpose(x, 0, 1)
        T, B = x.shape[0], x.shape[1]
        directions = 2 if self.bidirectional else 1
        # (h, c) for LSTM, (h,) otherwise: (num_layers·directions, B, size) each.
        sizes = [self.proj_size or self.hidden_size] + ([self.hidden_size] if self.mode == "LSTM" else [])
        names = ("h_0", "c_0") if self.mode == "LSTM" else ("hx",)
        if hx is None:
            given = None
        else:
            if self.mode == "LSTM" and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                raise TypeError(f"{self._get_name()}({self.extra_repr()}): hx must be a pair (h_0, c_0), got "
                                f"{type(hx).__name__}")
            given = tuple(self._check_state(s, n, (self.num_layers * directions, B, size), batched)
                          for s, n, size in zip(hx if self.mode == "LSTM" else (hx,), names, sizes))
        if lengths is not None and not batched:
            raise self._error("got lengths for an unbatched input")
        seq = None if lengths is None else _Lengths(lengths, T, B, self)
        if seq is not None:
            order = Tensor(seq.order)
            x = F.index_select(x, 1, order)
            given = None if given is None else tuple(F.index_select(s, 1, order) for s in given)

        finals = [[] for _ in sizes]
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(("", "_reverse")[:directions]):
                k = layer * directions + d
                if given is not None:
                    state = tuple(s[k] for s in given)
                elif seq is not None:  # stretches slice the state: zeros made explicit
                    state = tuple(Tensor(np.zeros((B, size), x.dtype)) for size in sizes)
                else:
                    state = (None,) * len(sizes)
                run = self._runner(self._weights(layer, suffix))
                source = x if d == 0 else _reverse_in_length(x, seq)
                y, state = _run_in_stretches(run, source, state, seq)
                outputs.append(y if d == 0 else _reverse_in_length(y, seq))
                for i, s in enumerate(state):
                    finals[i].append(s)
            x = outputs[0] if directions == 1 else F.cat(outputs, dim=2)
            if self.dropout and self.training and layer + 1 < self.num_layers:
                x = F.dropout(x, self.dropout, training=True)

        finals = [_stack_states(f) for f in finals]
        if seq is not None:
            inverse = Tensor(seq.inverse)
            x = F.index_select(x, 1, inverse)
            finals = [F.index_select(f, 1, inverse) for f in finals]
        if self.batch_first and batched:
            x = F.transpose(x, 0, 1)
        if not batched:
            x = F.squeeze(x, 1)
            finals = [F.squeeze(f, 1) for f in finals]
        return x, (tuple(finals) if self.mode == "LSTM" else finals[0])


def _stack_states(states: list) -> Tensor:
    """The final states of every layer and direction stacked (num_layers·directions, B, ·)."""
    if len(states) > 1:
        return F.stack(states, dim=0)
    if states[0].requires_grad and is_grad_enabled():
        return F.unsqueeze(states[0], 0)
    return Tensor(states[0].data[None])


def _single_state(result):
    y, h = result
    return y, (h,)


def _lstm_projected(x, state, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr):
    """LSTM with projections (h_t = W_hr·(o ⊙ tanh c_t), PyTorch's proj_size), composed per step."""
    T, B = x.shape[0], x.shape[1]
    H, P = weight_hr.shape[1], weight_hr.shape[0]
    h, c = state
    h = Tensor(np.zeros((B, P), x.dtype)) if h is None else h
    c = Tensor(np.zeros((B, H), x.dtype)) if c is None else c
    projected = F.reshape(F.linear(F.reshape(x, (T * B, x.shape[2])), weight_ih, bias_ih), (T, B, 4 * H))
    outputs = []
    for gx in F.unbind(projected, 0):
        i, f, g, o = F.chunk(gx + F.linear(h, weight_hh, bias_hh), 4, 1)
        c = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
        h = F.linear(F.sigmoid(o) * F.tanh(c), weight_hr)
        outputs.append(h)
    return F.stack(outputs, dim=0), (h, c)


class LSTM(RNNBase):
    """Multi-layer LSTM (PyTorch's equations, gate order i, f, g, o), each layer and direction one
    call of the fused native kernel.

    input (T, B, input_size) ((B, T, input_size) with batch_first, or unbatched (T, input_size)),
    hx = (h_0, c_0) each (num_layers·D, B, H_out) / (num_layers·D, B, hidden_size) or None →
    output (T, B, D·H_out), (h_n, c_n); D = 2 when bidirectional, H_out = proj_size or hidden_size.
    ``lengths`` (B,) gives each sequence's length in a padded batch (see the module docstring).
    Dropout (training only) applies to the outputs of every layer but the last.

    >>> import fastdl
    >>> lstm = fastdl.nn.LSTM(4, 8, bidirectional=True)
    >>> out, (h, c) = lstm(fastdl.randn(6, 2, 4))
    >>> out.shape, h.shape, sorted(lstm.state_dict())[:2]
    ((6, 2, 16), (2, 2, 8), ['bias_hh_l0', 'bias_hh_l0_reverse'])
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)


class GRU(RNNBase):
    """Multi-layer GRU with PyTorch's equations (gate order r, z, n), each layer and direction one
    call of the fused native kernel.

    input (T, B, input_size) ((B, T, ·) with batch_first, or (T, input_size)), hx
    (num_layers·D, B, hidden_size) or None → output (T, B, D·hidden_size), h_n; ``lengths`` as LSTM.

    >>> import fastdl
    >>> out, h = fastdl.nn.GRU(4, 8, num_layers=2)(fastdl.randn(6, 2, 4))
    >>> out.shape, h.shape
    ((6, 2, 8), (2, 2, 8))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)


class RNN(RNNBase):
    """Multi-layer Elman RNN, h_t = tanh(x_t·W_ihᵀ + b_ih + h_{t-1}·W_hhᵀ + b_hh) (or ReLU), composed
    from ops. Shapes as GRU.

    >>> import fastdl
    >>> out, h = fastdl.nn.RNN(4, 8, nonlinearity="relu", batch_first=True)(fastdl.randn(2, 6, 4))
    >>> out.shape, h.shape
    ((2, 6, 8), (1, 2, 8))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, device, dtype)


# ---- cells --------------------------------------------------------------------------------------

class _CellBase(Module):
    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int, dtype=None):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        self.input_size, self.hidden_size, self.bias = int(input_size), int(hidden_size), bool(bias)
        self.weight_ih = _parameter(gates * hidden_size, input_size, dtype=dtype)
        self.weight_hh = _parameter(gates * hidden_size, hidden_size, dtype=dtype)
        self.bias_ih = _parameter(gates * hidden_size, dtype=dtype) if bias else None
        self.bias_hh = _parameter(gates * hidden_size, dtype=dtype) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias U(−1/√hidden_size, 1/√hidden_size), as PyTorch."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if p is not None:
                init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            text += f", nonlinearity='{self.nonlinearity}'"
        return text

    def _batched(self, input, states):
        """input (B, I) or (I,) and the states (B, H) or (H,), checked; unbatched ones get B = 1."""
        if not isinstance(input, Tensor):
            raise TypeError(f"{self._get_name()}({self.extra_repr()}): input must be a Tensor, got "
                            f"{type(input).__name__}")
        data = input.data
        if data.ndim not in (1, 2) or data.shape[-1] != self.input_size:
            raise self._error(f"got input of shape {_shape(input)}: expected (B, {self.input_size}) or "
                              f"({self.input_size},)")
        dtype = self._parameters["weight_ih"].data.dtype
        batched = data.ndim == 2
        expected = (data.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        for name, s in ((("input", input),) + tuple(states)):
            if s is None:
                continue
            if name != "input" and (not isinstance(s, Tensor) or s.data.shape != expected):
                raise self._error(f"got {name} of shape {_shape(s) if isinstance(s, Tensor) else type(s).__name__}, "
                                  f"expected {expected}")
            if s.data.dtype != dtype or s.data.__class__ is not data.__class__:
                raise TypeError(f"{self._get_name()}({self.extra_repr()}): {name} {s.dtype} {_shape(s)} differs "
                                f"from the parameters' dtype {dtype} or device; convert with .to()")
        if batched:
            return True, input, [s for _, s in states]
        return False, F.unsqueeze(input, 0), [None if s is None else F.unsqueeze(s, 0) for _, s in states]


class LSTMCell(_CellBase):
    """One LSTM step on the native kernel: input (B, input_size) or (input_size,), hx = (h, c) each
    (B, hidden_size) or None (zeros) → (h', c').

    >>> import fastdl
    >>> cell = fastdl.nn.LSTMCell(3, 5)
    >>> h, c = cell(fastdl.randn(2, 3))
    >>> h, c = cell(fastdl.randn(2, 3), (h, c))
    >>> h.shape, c.shape
    ((2, 5), (2, 5))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 4, dtype)

    def forward(self, input, hx=None):
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"{self._get_name()}({self.extra_repr()}): hx must be a pair (h, c), got "
                            f"{type(hx).__name__}")
        h, c = (None, None) if hx is None else hx
        batched, x, (h, c) = self._batched(input, (("h", h), ("c", c)))
        # The step is called once per time step from Python: every operand is checked above (the
        # parameters are this cell's own), so the native op is applied directly.
        p = self._parameters
        h, c = F._apply_recurrent(_lstm.LSTMCellFn, (x, h, c, p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                                     p["bias_hh"]))
        return (h, c) if batched else (F.squeeze(h, 0), F.squeeze(c, 0))


class GRUCell(_CellBase):
    """One GRU step on the native kernel: input (B, input_size) or (input_size,), hx
    (B, hidden_size) or None → h'.

    >>> import fastdl
    >>> fastdl.nn.GRUCell(3, 5)(fastdl.randn(3)).shape
    (5,)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 3, dtype)

    def forward(self, input, hx=None):
        batched, x, (h,) = self._batched(input, (("hx", hx),))
        p = self._parameters
        h = F._apply_recurrent(_lstm.GRUCellFn, (x, h, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]))
        return h if batched else F.squeeze(h, 0)


class RNNCell(_CellBase):
    """One Elman RNN step (composed from ops), tanh or ReLU: input (B, input_size) or (input_size,),
    hx (B, hidden_size) or None → h'.

    >>> import fastdl
    >>> fastdl.nn.RNNCell(3, 5, nonlinearity="relu")(fastdl.randn(2, 3)).shape
    (2, 5)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, 1, dtype)

    def forward(self, input, hx=None):
        batched, x, (h,) = self._batched(input, (("hx", hx),))
        cell = F.rnn_tanh_cell if self.nonlinearity == "tanh" else F.rnn_relu_cell
        h = cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if batched else F.squeeze(h, 0)
