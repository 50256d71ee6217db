"""Reverse-mode autodiff on the computational graph of an introductory lecture:

    f(x1, x2, x3) = (x1·x2·sin(x3) + e^(x1·x2)) / x3

fastdl records the graph while computing f, then ``f.backward()`` walks it from the output to the
inputs. The three partial derivatives are checked against the formulas derived by hand and against
central finite differences:

    ∂f/∂x1 = x2·(sin x3 + e^(x1·x2)) / x3
    ∂f/∂x2 = x1·(sin x3 + e^(x1·x2)) / x3
    ∂f/∂x3 = x1·x2·cos(x3) / x3 - (x1·x2·sin x3 + e^(x1·x2)) / x3²

Run: python examples/autodiff_graph.py [x1 x2 x3]   (exits non-zero if a check fails)
"""
import math
import sys

import fastdl


def f(x1, x2, x3):
    a = x1 * x2                 # the shared node: used by both the product and the exponential
    return (a * x3.sin() + a.exp()) / x3


def by_hand(x1, x2, x3):
    e = math.exp(x1 * x2)
    return (
        x2 * (math.sin(x3) + e) / x3,
        x1 * (math.sin(x3) + e) / x3,
        x1 * x2 * math.cos(x3) / x3 - (x1 * x2 * math.sin(x3) + e) / x3 ** 2,
    )


def finite_differences(point, h=1e-6):
    def value(p):
        return f(*(fastdl.tensor(v, dtype=fastdl.float64) for v in p)).item()

    grads = []
    for i in range(3):
        plus, minus = list(point), list(point)
        plus[i] += h
        minus[i] -= h
        grads.append((value(plus) - value(minus)) / (2 * h))
    return grads


def print_graph(output):
    """The recorded graph, from the output back to the inputs (each node once)."""
    seen, order, stack = set(), [], [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or isinstance(node, fastdl.Tensor):
            continue
        seen.add(id(node))
        order.append(node)
        stack.extend(edge[0] for edge in node.next_functions if edge is not None)
    print("graph (output → inputs): " + " → ".join(node.name() for node in order))


def main(argv):
    point = [float(v) for v in argv[1:4]] if len(argv) >= 4 else [1.0, 2.0, 0.5]
    x1, x2, x3 = (fastdl.tensor(v, dtype=fastdl.float64, requires_grad=True) for v in point)
    out = f(x1, x2, x3)
    out.backward()
    print(f"f({point[0]}, {point[1]}, {point[2]}) = {out.item():.10f}")
    print_graph(out)
    hand = by_hand(*point)
    numeric = finite_differences(point)
    ok = True
    print(f"{'':8} {'backward':>16} {'by hand':>16} {'finite diff.':>16}")
    for name, x, h, n in zip(("∂f/∂x1", "∂f/∂x2", "∂f/∂x3"), (x1, x2, x3), hand, numeric):
        g = x.grad.item()
        good = math.isclose(g, h, rel_tol=1e-12, abs_tol=1e-12) and math.isclose(g, n, rel_tol=1e-6, abs_tol=1e-8)
        ok &= good
        print(f"{name:8} {g:16.10f} {h:16.10f} {n:16.10f}  {'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
