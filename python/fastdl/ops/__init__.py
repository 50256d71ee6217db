"""The differentiable ops: one module per family of :class:`fastdl.tensor.Function` subclasses.

``elementwise`` (arithmetic, activations; broadcasting undone by the engine), ``reduce`` (sums,
extrema, norms, softmax), ``shape`` (views, joins, padding, indexing), ``gemm`` (matmul and linear
on the native GEMM). Each ``forward``/``backward`` works on raw arrays through
``xp = array_module(x)`` so the same code serves NumPy and, later, CuPy. The public entry points
are in :mod:`fastdl.functional` and on :class:`fastdl.Tensor`.
"""
