"""Every worked ``Example:`` in the package's docstrings runs and gives the shown result."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gpt_pipeline

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(gpt_pipeline.__path__, prefix="gpt_pipeline.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
