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
        "ForbiddenObjectError",
        "UploadTimeoutError",
        "DeadlineError",
        "WorkerCrashedError",
        "CancelledError",
    }
    assert all(issubclass(c, RasterfnError) for c in classes)


def test_what_the_caller_must_fix_is_an_input_error_and_what_to_retry_is_not():
    assert issubclass(service_errors.EventError, InputError)
    assert issubclass(service_errors.MediaTypeError, service_errors.UploadError)
    assert not issubclass(service_errors.TransientError, InputError)
    assert not issubclass(service_errors.ObjectMissingError, InputError)
    assert issubclass(service_errors.BusyError, service_errors.TransientError)


def test_a_crash_or_a_timeout_is_the_input_s_fault_and_a_foreign_bucket_a_bad_event():
    assert issubclass(service_errors.WorkerCrashedError, InputError)
    assert issubclass(service_errors.DeadlineError, InputError)
    assert issubclass(service_errors.ForbiddenObjectError, service_errors.EventError)
    assert issubclass(service_errors.CancelledError, service_errors.TransientError)
