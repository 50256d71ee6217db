"""Optimizers and learning-rate schedulers against torch.optim: 20-step trajectories on the same
problem (values equal within the dtype's rounding), on every CPU kernel level, state-dict round
trips (fastdl ↔ fastdl, fastdl ↔ PyTorch), and a table of bad inputs."""
import math

import numpy as np
import pytest

import fastdl
from fastdl import nn, optim
from fastdl.backend import _C
from fastdl.optim import lr_scheduler

from .helpers import assert_close, needs_torch, torch


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# Awkward sizes: 1, primes, vector widths ± 1, and one tensor larger than a kernel chunk (32768).
SHAPES = [(7, 13), (1,), (33,), (3, 5, 2), (40_000,)]
STEPS = 20
# Rounding grows with the ~10 operations of each of the 20 steps.
OPS = 10 * STEPS

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("Adadelta", dict(lr=1.0, rho=0.8, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.05)),
    ("Adam", dict(lr=0.05, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("AdamW", dict(lr=0.05)),
    ("AdamW", dict(lr=0.05, weight_decay=0.1, amsgrad=True, betas=(0.8, 0.99))),
    ("NAdam", dict(lr=0.05, weight_decay=0.1)),
    ("NAdam", dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.01)),
    ("Adamax", dict(lr=0.05, weight_decay=0.1)),
]
CONFIG_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]


def make_problem(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    targets = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return init, targets


def gradient(step, i, p, target):
    """A gradient that depends on the parameter (each library follows its own trajectory),
    varies with the step, and is absent for parameter 1 every third step."""
    if i == 1 and step % 3 == 0:
        return None
    return ((p - target) * (1 + 0.1 * step) + 0.05 * math.sin(step + i)).astype(p.dtype)


def fastdl_params(arrays):
    return [nn.Parameter(fastdl.Tensor(a.copy())) for a in arrays]


def groups_of(params, lr):
    """Two parameter groups: the second with half the learning rate."""
    return [{"params": params[:3]}, {"params": params[3:], "lr": lr * 0.5}]


def step_fastdl(opt, params, targets, step):
    for i, (p, t) in enumerate(zip(params, targets)):
        g = gradient(step, i, p.data, t)
        p.grad = None if g is None else fastdl.Tensor(g)
    opt.step()


def step_torch(opt, params, targets, step):
    for i, (p, t) in enumerate(zip(params, targets)):
        g = gradient(step, i, p.detach().numpy(), t)
        p.grad = None if g is None else torch.from_numpy(g)
    opt.step()


def run_pair(name, kwargs, dtype, steps=STEPS, shapes=SHAPES):
    """Both libraries from the same start; yields (step, fastdl arrays, torch arrays)."""
    init, targets = make_problem(dtype, shapes)
    fp = fastdl_params(init)
    tp = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    lr = kwargs["lr"]
    fopt = getattr(optim, name)(groups_of(fp, lr), **kwargs)
    topt = getattr(torch.optim, name)(groups_of(tp, lr), **kwargs)
    for step in range(steps):
        step_fastdl(fopt, fp, targets, step)
        step_torch(topt, tp, targets, step)
        yield step, [p.data for p in fp], [p.detach().numpy() for p in tp], fopt, topt


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_trajectory_matches_torch(cpu_level, config, dtype):
    name, kwargs = config
    for step, ours, ref, fopt, topt in run_pair(name, kwargs, dtype):
        for i, (a, r) in enumerate(zip(ours, ref)):
            assert a.dtype == dtype
            assert_close(a, r, dtype, k=OPS)
    # The optimizer state matches too: the same keys, and in float64 the same values. Some state
    # amplifies rounding (centred RMSprop's buffer divides by √(v − m̄²), a difference of nearly
    # equal numbers), so the float64 bound allows a condition number of 10³; float32 is not compared.
    fstate, tstate = fopt.state_dict()["state"], topt.state_dict()["state"]
    assert sorted(fstate) == sorted(tstate)
    for index in fstate:
        assert set(fstate[index]) == set(tstate[index])
        for key, value in fstate[index].items():
            ref = tstate[index][key]
            ref = ref.numpy() if hasattr(ref, "numpy") else ref
            assert np.shape(value) == np.shape(ref)
            if dtype == np.float64:
                ref = np.asarray(ref, np.float64)
                scale = 1e3 * max(float(np.abs(ref).max(initial=0.0)), 1.0)
                assert_close(np.asarray(value, np.float64), ref, dtype, k=OPS, scale=scale)


def test_fused_step_same_for_any_thread_count(threads):
    # Elementwise and chunked: results do not depend on how chunks are split among threads.
    init, targets = make_problem(np.float32, [(300_000,), (17,)])
    results = []
    for n in (1, 2):
        fastdl.set_num_threads(n)
        params = fastdl_params(init)
        opt = optim.Adam(params, lr=0.01, amsgrad=True)
        for step in range(3):
            step_fastdl(opt, params, targets, step)
        results.append([p.data.copy() for p in params])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@needs_torch
def test_non_contiguous_parameter_is_updated_in_place():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((5, 3)).astype(np.float32)
    view = base.T  # (3, 5), not C-contiguous
    p = nn.Parameter(fastdl.Tensor(view))
    q = torch.tensor(view.copy(), requires_grad=True)
    fopt, topt = optim.Adam([p], lr=0.1), torch.optim.Adam([q], lr=0.1)
    for step in range(5):
        g = (np.arange(15, dtype=np.float32).reshape(3, 5) - step).T.copy().T  # a strided gradient too
        p.grad = fastdl.Tensor(g)
        q.grad = torch.from_numpy(np.ascontiguousarray(g))
        fopt.step()
        topt.step()
    assert p.data is view
    assert_close(base.T, q.detach().numpy(), np.float32, k=OPS)


def test_grad_none_is_skipped_and_state_is_per_parameter():
    a, b = fastdl_params([np.ones(3, np.float32), np.ones(2, np.float32)])
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = fastdl.ones(3)
    opt.step()
    opt.step()
    b.grad = fastdl.ones(2)
    opt.step()
    assert opt.state[a]["step"] == 3 and opt.state[b]["step"] == 1
    # The first Adam step of b moves it by exactly lr.
    np.testing.assert_allclose(b.data, 0.9, rtol=1e-6)


def test_zero_grad_and_closure():
    w = fastdl_params([np.array([1.0, 2.0], np.float32)])[0]
    opt = optim.SGD([w], lr=0.5)
    w.grad = fastdl.tensor([1.0, 1.0])
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(w.grad.data, 0.0)
    opt.zero_grad()
    assert w.grad is None

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss) == pytest.approx(5.0)
    np.testing.assert_allclose(w.data, [0.0, 0.0])


def test_add_param_group_and_repr():
    a, b = fastdl_params([np.zeros(2, np.float32), np.zeros(3, np.float32)])
    opt = optim.SGD([a], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": b, "lr": 0.01})
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert opt.param_groups[1]["momentum"] == 0.9
    text = repr(opt)
    assert text.startswith("SGD (") and "Parameter Group 1" in text and "lr: 0.01" in text


def test_state_dict_round_trip_continues_identically(tmp_path):
    init, targets = make_problem(np.float32, [(4, 5), (7,)])
    straight = fastdl_params(init)
    opt = optim.AdamW(straight, lr=0.05, amsgrad=True)
    for step in range(10):
        step_fastdl(opt, straight, targets, step)
    path = tmp_path / "opt.safetensors"
    fastdl.save({"params": [p.detach() for p in straight], "opt": opt.state_dict()}, path)
    for step in range(10, 20):
        step_fastdl(opt, straight, targets, step)

    ckpt = fastdl.load(path)
    resumed = fastdl_params([t.data for t in ckpt["params"]])
    opt2 = optim.AdamW(resumed, lr=1.0)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    for step in range(10, 20):
        step_fastdl(opt2, resumed, targets, step)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a.data, b.data)


@needs_torch
@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.05, amsgrad=True)), ("SGD", dict(lr=0.1, momentum=0.9)),
                                         ("NAdam", dict(lr=0.05)), ("RMSprop", dict(lr=0.01, centered=True))])
def test_state_dict_interoperates_with_torch(name, kwargs):
    init, targets = make_problem(np.float32, [(6, 3), (5,)])
    fp = fastdl_params(init)
    tp = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    fopt, topt = getattr(optim, name)(fp, **kwargs), getattr(torch.optim, name)(tp, **kwargs)
    for step in range(5):
        step_fastdl(fopt, fp, targets, step)
        step_torch(topt, tp, targets, step)
    # fastdl's state into a fresh torch optimizer, torch's into a fresh fastdl one; all four continue.
    fp2 = fastdl_params([p.detach().numpy() for p in tp])
    tp2 = [torch.tensor(p.data.copy(), requires_grad=True) for p in fp]
    fopt2, topt2 = getattr(optim, name)(fp2, **kwargs), getattr(torch.optim, name)(tp2, **kwargs)
    fopt2.load_state_dict(topt.state_dict())
    sd = fopt.state_dict()
    topt2.load_state_dict({
        "state": {i: {k: torch.tensor(np.asarray(v, np.float32) if k != "step" else float(v))
                      for k, v in s.items()} for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"],
    })
    for step in range(5, 10):
        for opt, params in ((fopt, fp), (fopt2, fp2)):
            step_fastdl(opt, params, targets, step)
        for opt, params in ((topt, tp), (topt2, tp2)):
            step_torch(opt, params, targets, step)
    for a, b, c, d in zip(fp, fp2, tp, tp2):
        for x in (b.data, c.detach().numpy(), d.detach().numpy()):
            assert_close(a.data, x, np.float32, k=OPS)


def test_load_state_dict_casts_to_parameter_dtype():
    p64 = fastdl_params([np.zeros(3, np.float64)])[0]
    opt = optim.Adam([p64])
    opt.load_state_dict({"state": {0: {"step": 2.0, "exp_avg": np.ones(3, np.float32),
                                       "exp_avg_sq": np.ones(3, np.float32)}},
                         "param_groups": [{"lr": 0.1, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0,
                                           "amsgrad": False, "maximize": False, "decoupled_weight_decay": False,
                                           "params": [0]}]})
    state = opt.state[p64]
    assert state["step"] == 2 and state["exp_avg"].dtype == np.float64
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


# ---- schedulers -----------------------------------------------------------------------------

SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 5, 9], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01)),
    ("LinearLR", dict(start_factor=0.1, end_factor=1.0, total_iters=6)),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.2, total_iters=4)),
    ("ConstantLR", dict(factor=0.5, total_iters=4)),
    ("LambdaLR", dict(lr_lambda=lambda e: 1.0 / (1 + e))),
    ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.95)),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=25)),
    ("OneCycleLR", dict(max_lr=[1.0, 0.5], total_steps=25, anneal_strategy="linear", three_phase=True,
                        pct_start=0.2, div_factor=10.0)),
]


def scheduler_pair(name, kwargs, opt_name="SGD"):
    fp = fastdl_params([np.zeros(2, np.float32), np.zeros(3, np.float32)])
    tp = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    okw = dict(lr=0.1, momentum=0.9) if opt_name == "SGD" else dict(lr=0.1)
    fopt = getattr(optim, opt_name)([{"params": fp[:1]}, {"params": fp[1:], "lr": 0.05}], **okw)
    topt = getattr(torch.optim, opt_name)([{"params": tp[:1]}, {"params": tp[1:], "lr": 0.05}], **okw)
    return (fopt, getattr(lr_scheduler, name)(fopt, **kwargs),
            topt, getattr(torch.optim.lr_scheduler, name)(topt, **kwargs))


def assert_groups_match(fopt, topt):
    for fg, tg in zip(fopt.param_groups, topt.param_groups):
        assert fg["lr"] == pytest.approx(tg["lr"], rel=1e-12, abs=1e-15)
        for key in ("momentum", "betas"):
            if key in tg:
                assert np.allclose(fg[key], tg[key], rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
@pytest.mark.parametrize("name,kwargs", SCHEDULERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULERS)])
def test_scheduler_matches_torch(name, kwargs, opt_name):
    fopt, fs, topt, ts = scheduler_pair(name, kwargs, opt_name)
    assert fs.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)
    steps = kwargs.get("total_steps", 20) - 1 if name == "OneCycleLR" else 20
    for _ in range(steps):
        fopt.step()
        topt.step()
        fs.step()
        ts.step()
        assert fs.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12, abs=1e-15)
        assert_groups_match(fopt, topt)


@needs_torch
def test_sequential_lr_warmup_then_cosine_matches_torch():
    fopt, _, topt, _ = scheduler_pair("ExponentialLR", dict(gamma=1.0))
    made = []
    for mod, opt in ((lr_scheduler, fopt), (torch.optim.lr_scheduler, topt)):
        warm = mod.LinearLR(opt, start_factor=0.01, total_iters=5)
        cos = mod.CosineAnnealingLR(opt, T_max=15, eta_min=1e-4)
        made.append(mod.SequentialLR(opt, [warm, cos], milestones=[5]))
    fs, ts = made
    for _ in range(20):
        fopt.step()
        topt.step()
        fs.step()
        ts.step()
        assert fs.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)


@needs_torch
@pytest.mark.parametrize("kwargs", [dict(), dict(mode="max", factor=0.5, patience=2, threshold_mode="abs",
                                                 threshold=0.05, cooldown=2, min_lr=[0.02, 0.0])])
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    fopt, _, topt, _ = scheduler_pair("ExponentialLR", dict(gamma=1.0))
    fs = lr_scheduler.ReduceLROnPlateau(fopt, **kwargs)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.96, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8,
               0.8, 0.8, 0.81, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 1.5, 1.5]
    for m in metrics:
        fs.step(m)
        ts.step(m)
        assert fs.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)
        assert (fs.num_bad_epochs, fs.cooldown_counter) == (ts.num_bad_epochs, ts.cooldown_counter)


@pytest.mark.parametrize("name,kwargs", SCHEDULERS[:7] + [("ReduceLROnPlateau", dict(patience=1))],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_scheduler_state_dict_round_trip(tmp_path, name, kwargs):
    def build():
        params = fastdl_params([np.zeros(2, np.float32)])
        opt = optim.SGD(params, lr=0.1, momentum=0.9)
        return opt, getattr(lr_scheduler, name)(opt, **kwargs)

    def advance(opt, sched, epoch):
        opt.step()
        sched.step(1.0 / (1 + epoch % 3)) if name == "ReduceLROnPlateau" else sched.step()

    opt, sched = build()
    for epoch in range(6):
        advance(opt, sched, epoch)
    fastdl.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.safetensors")
    expected = []
    for epoch in range(6, 14):
        advance(opt, sched, epoch)
        expected.append(sched.get_last_lr())
    opt2, sched2 = build()
    ckpt = fastdl.load(tmp_path / "s.safetensors")
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    got = []
    for epoch in range(6, 14):
        advance(opt2, sched2, epoch)
        got.append(sched2.get_last_lr())
    assert got == expected


# ---- bad inputs -----------------------------------------------------------------------------

def _p(*shape, dtype=np.float32):
    return nn.Parameter(fastdl.Tensor(np.zeros(shape, dtype)))


BAD_CONSTRUCTION = [
    (lambda: optim.SGD([_p(2)], lr=-1.0), ValueError, "Invalid learning rate"),
    (lambda: optim.SGD([_p(2)], lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires"),
    (lambda: optim.SGD([_p(2)], lr=0.1, momentum=-0.5), ValueError, "Invalid momentum value"),
    (lambda: optim.Adam([_p(2)], betas=(1.0, 0.9)), ValueError, "Invalid beta parameter at index 0"),
    (lambda: optim.Adam([_p(2)], betas=(0.9, -0.1)), ValueError, "Invalid beta parameter at index 1"),
    (lambda: optim.Adam([_p(2)], eps=-1e-8), ValueError, "Invalid epsilon value"),
    (lambda: optim.AdamW([_p(2)], weight_decay=-0.1), ValueError, "Invalid weight_decay value"),
    (lambda: optim.Adadelta([_p(2)], rho=1.5), ValueError, "Invalid rho value"),
    (lambda: optim.Adam([]), ValueError, "empty parameter list"),
    (lambda: optim.Adam(_p(2)), TypeError, "iterable of Tensors"),
    (lambda: optim.Adam({_p(2)}), TypeError, "ordered collections"),
    (lambda: optim.Adam([{"params": [_p(2)]}, {"params": "x"}]), TypeError, "Tensors with .data"),
    (lambda: (lambda p: optim.Adam([{"params": [p]}, {"params": [p]}]))(_p(2)), ValueError,
     "more than one parameter group"),
    (lambda: optim.Optimizer([_p(2)], {"lr": optim.optimizer.required}), ValueError,
     "required optimization parameter lr"),
    (lambda: lr_scheduler.StepLR("not an optimizer", 3), TypeError, "is not an Optimizer"),
    (lambda: lr_scheduler.OneCycleLR(optim.SGD([_p(2)], lr=0.1), max_lr=1.0), ValueError,
     "either total_steps OR"),
    (lambda: lr_scheduler.ReduceLROnPlateau(optim.SGD([_p(2)], lr=0.1), factor=1.5), ValueError, "Factor"),
    (lambda: lr_scheduler.ReduceLROnPlateau(optim.SGD([_p(2)], lr=0.1), mode="up"), ValueError, "mode up"),
    (lambda: lr_scheduler.LinearLR(optim.SGD([_p(2)], lr=0.1), start_factor=0), ValueError, "Starting"),
    (lambda: lr_scheduler.SequentialLR(optim.SGD([_p(2)], lr=0.1), [], []), ValueError, "at least one"),
]


@pytest.mark.parametrize("make,error,words", BAD_CONSTRUCTION, ids=[w for _, _, w in BAD_CONSTRUCTION])
def test_bad_construction(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_bad_steps():
    p = _p(3)
    opt = optim.Adam([p])
    p.grad = fastdl.Tensor(np.zeros(3, np.float64))
    with pytest.raises(ValueError, match=r"Adam: parameter 0 is float32 \(3,\) but its gradient is float64"):
        opt.step()
    h = _p(3, dtype=np.float16)
    h.grad = fastdl.Tensor(np.zeros(3, np.float16))
    with pytest.raises(TypeError, match="float32 and float64"):
        optim.SGD([h], lr=0.1).step()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        optim.Adam([p]).load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="doesn't match the size"):
        optim.Adam([p]).load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})
    sched = lr_scheduler.OneCycleLR(optim.SGD([p], lr=0.1, momentum=0.9), max_lr=1.0, total_steps=2)
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match="Tried to step 3 times"):
        sched.step()


def _hyper():
    return {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def _arrays(n=4, dtype=np.float32):
    return np.zeros(n, dtype), np.ones(n, dtype), np.zeros(n, dtype), np.zeros(n, dtype)


def _call(rule="adam", hyper=None, params=None, grads=None, states=None, coefs=None):
    p, g, m, v = _arrays()
    _C.optim_step(rule, _hyper() if hyper is None else hyper, [p] if params is None else params,
                  [g] if grads is None else grads, [[m], [v], []] if states is None else states,
                  np.array([[0.1, 1.0, 0, 0]]) if coefs is None else coefs)


BAD_KERNEL_CALLS = [
    (dict(rule="lion"), ValueError, "unknown rule 'lion'"),
    (dict(hyper={"lr": 0.1, "gamma": 2.0}), ValueError, "unknown hyperparameter 'gamma'"),
    (dict(params=[np.zeros((4, 2), np.float32)[:, 0]]), ValueError, "must be C-contiguous"),
    (dict(params=[[0.0, 0.0, 0.0, 0.0]]), TypeError, "must be a NumPy array"),
    (dict(params=[np.zeros(4, np.int32)]), TypeError, "must be float32 or float64"),
    (dict(grads=[np.ones(5, np.float32)]), ValueError, r"grad 0 \(5,\) does not match parameter \(4,\)"),
    (dict(grads=[np.ones(4, np.float64)]), TypeError, "grad 0 is float64, parameter is float32"),
    (dict(grads=[]), ValueError, "1 params but 0 grads"),
    (dict(states=[[np.zeros(4, np.float32)], [], []]), ValueError, "state slot 1 is missing"),
    (dict(states=[[np.zeros(4, np.float32)], [np.zeros(4, np.float32)], [np.zeros(4, np.float32)]]), ValueError,
     "state slot 2 must be empty"),
    (dict(states=[[np.zeros(4, np.float32)], [np.zeros(4, np.float32), np.zeros(4, np.float32)], []]), ValueError,
     "state list 1 has 2 arrays for 1 parameters"),
    (dict(coefs=np.zeros((2, 4))), ValueError, r"coefs must have shape \(1, 4\)"),
]


@pytest.mark.parametrize("kwargs,error,words", BAD_KERNEL_CALLS, ids=[str(w) for _, _, w in BAD_KERNEL_CALLS])
def test_kernel_bad_inputs(kwargs, error, words):
    with pytest.raises(error, match=words):
        _call(**kwargs)


def test_kernel_read_only_parameter():
    p = np.zeros(4, np.float32)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _call(params=[p])
