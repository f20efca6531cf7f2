"""Fixtures shared by the test files."""
import os

import pytest

from sparsekit import _native

# The ISAs the op tests select.  Normally those of this build and CPU; SPARSEKIT_TEST_ISAS
# (comma-separated) names them when the custom-op library under test is another build than the
# installed module: tests/native/run_avx512_emu.sh runs the op tests on its emulated AVX-512
# library, which this CPU's module does not list.
TEST_ISAS = (os.environ["SPARSEKIT_TEST_ISAS"].split(",") if os.environ.get("SPARSEKIT_TEST_ISAS")
             else list(_native.available_isas()))


@pytest.fixture(params=TEST_ISAS)
def isa(request, monkeypatch):
    """Each kernel ISA under test, selected for the sessions the test creates."""
    monkeypatch.setenv("SPARSEKIT_ISA", request.param)
    return request.param
