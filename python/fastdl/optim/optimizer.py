"""The optimizer base class: parameter groups, ``zero_grad``, ``step``, state dicts.

A subclass declares its update rule once: the state it keeps per parameter (``_prepare``), the
hyperparameters of its native rule (``_hyper``) and which state arrays the rule reads
(``_slots``). ``step()`` gathers every parameter of a group that has a gradient and runs the rule
over all of them in one fused native call (``fastdl._C.optim_step``, ``csrc/cpu/optim.cpp``):
each element of the parameter, its gradient and its state is read and written once, in place,
outside the autograd graph, and the cost in Python is one call per group plus a few attribute
reads per parameter, never one call per array operation.

State and state-dict layout follow PyTorch (``state[p]["exp_avg"]``; ``state_dict()`` holds
``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``), so a PyTorch
optimizer state dict loads into the matching fastdl optimizer and back.
"""
from __future__ import annotations

import copy
from collections.abc import MutableMapping

import numpy as np

from ..backend import _C

__all__ = ["Optimizer", "required"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class _RequiredParameter:
    """Marks a hyperparameter with no default (as ``torch.optim.optimizer.required``)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _RequiredParameter()


class _StateByParam(MutableMapping):
    """``optimizer.state``: per-parameter state dicts keyed by the parameter's identity.

    Like PyTorch's defaultdict, reading a parameter that has no state yet gives an empty dict.
    (Keys are compared by identity: a Tensor's ``==`` is elementwise.)
    """

    def __init__(self):
        self._items: dict[int, tuple[object, dict]] = {}

    def __getitem__(self, param) -> dict:
        entry = self._items.get(id(param))
        if entry is None:
            entry = self._items[id(param)] = (param, {})
        return entry[1]

    def __setitem__(self, param, value: dict) -> None:
        self._items[id(param)] = (param, value)

    def __delitem__(self, param) -> None:
        del self._items[id(param)]

    def __contains__(self, param) -> bool:
        return id(param) in self._items

    def __iter__(self):
        return (param for param, _ in list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<optimizer state for {len(self)} parameters>"


def _is_torch_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _to_array(value) -> np.ndarray:
    """A NumPy copy of a fastdl Tensor, a PyTorch tensor or an array-like."""
    if _is_torch_tensor(value):
        return value.detach().cpu().numpy().copy()
    data = getattr(value, "data", value)
    if isinstance(data, np.ndarray):
        return data.copy()
    return np.array(value)


def _param_array(param) -> np.ndarray:
    data = getattr(param, "data", None)
    if data is None:
        raise TypeError(f"optimizer params must be Tensors with .data and .grad, got {type(param).__name__}")
    return data


class Optimizer:
    """Base class of all optimizers (``torch.optim.Optimizer``'s interface).

    params: an iterable of Tensors, or of dicts ``{"params": [...], <hyperparameter>: value}``
    (parameter groups, each with its own hyperparameters); ``defaults`` fills what a group leaves
    out.

    >>> import numpy as np
    >>> import fastdl
    >>> w = fastdl.nn.Parameter(fastdl.tensor([1.0, 2.0]))
    >>> opt = fastdl.optim.SGD([w], lr=0.5)
    >>> w.grad = fastdl.tensor([1.0, -1.0])
    >>> opt.step()
    >>> w.numpy()
    array([0.5, 2.5], dtype=float32)
    """

    # Name of the native rule (csrc/cpu/optim.cpp); set by each subclass.
    _rule = ""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: MutableMapping = _StateByParam()
        self.param_groups: list[dict] = []
        if _is_single_param(params):
            raise TypeError(
                f"params argument given to the optimizer should be an iterable of Tensors or dicts, "
                f"but got {type(params).__name__}"
            )
        if isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the ordering of "
                "tensors in sets will change between runs. Please use a list instead."
            )
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    # ---- the rule, one per subclass ---------------------------------------------------------

    def _slots(self, group: dict) -> tuple:
        """Names of the (up to 3) state arrays the native rule reads, ``None`` where unused."""
        raise TypeError(f"{type(self).__name__} does not define its update rule (_slots)")

    def _prepare(self, param: np.ndarray, state: dict, group: dict) -> tuple:
        """Create ``state`` on the first step, advance its step count, and return the per-tensor
        coefficients of this step (bias corrections)."""
        raise TypeError(f"{type(self).__name__} does not define its update rule (_prepare)")

    def _hyper(self, group: dict) -> dict:
        """Hyperparameters of the native rule for this group."""
        raise TypeError(f"{type(self).__name__} does not define its update rule (_hyper)")

    # ---- the public interface ---------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (e.g. when unfreezing layers)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError("param_group must have a 'params' entry")
        if _is_single_param(params):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the ordering of "
                "tensors in sets will change between runs. Please use a list instead."
            )
        else:
            params = list(params)
        for p in params:
            _param_array(p)
            if getattr(p, "grad_fn", None) is not None:
                raise ValueError("can't optimize a non-leaf Tensor")
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)
        if len({id(p) for p in params}) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if existing & {id(p) for p in params}:
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all optimized parameters: to ``None`` (default) or to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.data[...] = 0

    def step(self, closure=None):
        """One update of every parameter that has a gradient.

        closure: an optional callable that re-evaluates the model and returns the loss (run with
        gradients enabled); its result is returned.
        """
        loss = None
        if closure is not None:
            loss = _call_with_grad(closure)
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        name = type(self).__name__
        slots = self._slots(group)
        params, grads, writebacks, coefs = [], [], [], []
        states = [[], [], []]
        for index, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            data = _param_array(p)
            grad = p.grad.data if hasattr(p.grad, "data") else p.grad
            if not isinstance(data, np.ndarray) or not isinstance(grad, np.ndarray):
                raise TypeError(
                    f"{name}: parameter {index} is not a CPU array ({type(data).__name__}); "
                    "the fused optimizer step runs on CPU (NumPy) arrays"
                )
            if data.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{name}: parameter {index} {data.shape} is {data.dtype}; fastdl's optimizers "
                                "update float32 and float64 parameters")
            if grad.dtype != data.dtype or grad.shape != data.shape:
                raise ValueError(
                    f"{name}: parameter {index} is {data.dtype} {data.shape} but its gradient is "
                    f"{grad.dtype} {grad.shape}"
                )
            state = self.state[p]
            coefs.append(self._prepare(data, state, group))
            if not data.flags.c_contiguous:
                work = np.ascontiguousarray(data)
                writebacks.append((data, work))
                data = work
            params.append(data)
            grads.append(np.ascontiguousarray(grad))
            for slot, key in enumerate(slots):
                if key is not None:
                    states[slot].append(state[key])
        if not params:
            return
        table = np.zeros((len(params), 4), dtype=np.float64)
        for row, c in enumerate(coefs):
            table[row, : len(c)] = c
        _C.optim_step(self._rule, self._hyper(group), params, grads, states, table)
        for original, work in writebacks:
            original[...] = work

    def state_dict(self) -> dict:
        """``{"state": {index: {name: value}}, "param_groups": [{..., "params": [indices]}]}``
        with parameters numbered in group order, as PyTorch numbers them. State arrays are
        returned as they are held (not copied)."""
        mapping: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                mapping.setdefault(id(p), len(mapping))
            packed["params"] = [mapping[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {mapping[id(p)]: dict(s) for p, s in self.state.items() if id(p) in mapping and s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict from :meth:`state_dict` (fastdl's or PyTorch's, arrays or tensors).

        Hyperparameters come from the saved groups; state arrays are copied and cast to their
        parameter's dtype (the step count is kept as a number).
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: loaded state dict has a different number of parameter groups "
                f"({len(saved_groups)} vs {len(self.param_groups)})"
            )
        id_map = {}
        for group, saved in zip(self.param_groups, saved_groups):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: loaded state dict contains a parameter group that doesn't match "
                    f"the size of optimizer's group ({len(saved['params'])} vs {len(group['params'])} parameters)"
                )
            for index, p in zip(saved["params"], group["params"]):
                id_map[int(index)] = p
        new_state = _StateByParam()
        for index, saved_state in state_dict["state"].items():
            p = id_map.get(int(index))
            if p is None:
                continue
            data = _param_array(p)
            new_state[p] = {key: _load_state_value(key, value, data) for key, value in saved_state.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            merged = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            if isinstance(merged.get("betas"), list):
                merged["betas"] = tuple(merged["betas"])
            merged["params"] = group["params"]
            new_groups.append(merged)
        self.state = new_state
        self.param_groups = new_groups

    def __getstate__(self):
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        text = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            text += f"\nParameter Group {i}\n"
            for key in sorted(group):
                if key != "params":
                    text += f"    {key}: {group[key]}\n"
        return text + ")"


def _load_state_value(key: str, value, param: np.ndarray):
    if key in ("step", "mu_product"):
        number = float(_to_array(value)) if not isinstance(value, (int, float)) else value
        return int(number) if key == "step" and float(number).is_integer() else number
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    array = _to_array(value)
    if array.dtype.kind == "f":
        array = np.ascontiguousarray(array, dtype=param.dtype)
    if array.shape != param.shape:
        raise ValueError(f"optimizer state '{key}' has shape {array.shape} but its parameter has {param.shape}")
    return array


def _is_single_param(value) -> bool:
    """A Tensor (rather than an iterable of them): PyTorch rejects one passed as ``params``."""
    return hasattr(value, "data") and hasattr(value, "grad") and hasattr(value, "requires_grad")


def _call_with_grad(closure):
    from .. import tensor as _tensor

    enable_grad = getattr(_tensor, "enable_grad", None)
    if enable_grad is None:
        return closure()
    with enable_grad():
        return closure()
