"""The docstring examples of tuning/ and tracking/ run (house style: an example that never runs rots)."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["tuning.stream", "tuning.space", "tracking.config",
                                  "tracking.mlflow_tracker"])
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
