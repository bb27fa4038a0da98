from __future__ import annotations

import inspect

import pytest

from model import errors as core_errors
from model.errors import InputError, RasterBandsError, RasterfnError, RasterReadError


def test_every_core_error_derives_from_the_root():
    classes = [c for _, c in inspect.getmembers(core_errors, inspect.isclass) if c.__module__ == core_errors.__name__]
    assert len(classes) >= 6
    assert all(issubclass(c, RasterfnError) for c in classes)


@pytest.mark.parametrize("kind", [InputError, RasterReadError, RasterBandsError])
def test_renamed_keeps_the_type_and_names_the_users_file(kind):
    cause = OSError("libtiff said no")
    error = kind("/tmp/rasterfn-x/input.tif: has 3 band(s); /tmp/rasterfn-x/input.tif again")
    error.__cause__ = cause
    renamed = error.renamed("/tmp/rasterfn-x/input.tif", "scenes/a.tif")
    assert type(renamed) is kind
    assert str(renamed) == "scenes/a.tif: has 3 band(s); scenes/a.tif again"
    assert renamed.__cause__ is cause
    assert str(error).startswith("/tmp/")  # the original is left as it was
