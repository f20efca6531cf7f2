"""Fixtures shared by the test files."""
import pytest

from sparsekit import _native


@pytest.fixture(params=list(_native.available_isas()))
def isa(request, monkeypatch):
    """Each kernel ISA this machine has, selected for the sessions the test creates."""
    monkeypatch.setenv("SPARSEKIT_ISA", request.param)
    return request.param
