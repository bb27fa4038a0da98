from __future__ import annotations

import inspect

from handler import errors as service_errors
from model.errors import InputError, RasterfnError


def test_every_service_error_derives_from_the_one_root():
    classes = [
        c for _, c in inspect.getmembers(service_errors, inspect.isclass) if c.__module__ == service_errors.__name__
    ]
    assert {c.__name__ for c in classes} == {
        "EventError",
        "UploadError",
        "MediaTypeError",
        "ObjectMissingError",
        "TransientError",
        "BusyError",
    }
    assert all(issubclass(c, RasterfnError) for c in classes)


def test_what_the_caller_must_fix_is_an_input_error_and_what_to_retry_is_not():
    assert issubclass(service_errors.EventError, InputError)
    assert issubclass(service_errors.MediaTypeError, service_errors.UploadError)
    assert not issubclass(service_errors.TransientError, InputError)
    assert not issubclass(service_errors.ObjectMissingError, InputError)
    assert issubclass(service_errors.BusyError, service_errors.TransientError)
