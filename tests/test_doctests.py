"""The examples in the docstrings of the tensor, autodiff and ops modules run as written."""
import doctest
import importlib

import pytest

MODULES = ["fastdl", "fastdl.tensor", "fastdl.autograd", "fastdl.functional", "fastdl.random", "fastdl.backend",
           "fastdl.ops.gemm", "fastdl.distributed", "fastdl.nn.parallel"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, globs={}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
