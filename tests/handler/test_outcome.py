from __future__ import annotations

import json
import logging

import pytest

from handler.outcome import Outcome, OutcomeStatus, describe, log_level, summarise


def test_outcome_as_dict_is_json_serialisable_with_plain_status():
    outcome = Outcome(OutcomeStatus.WRITTEN, "b", "k.tif", "k.npy", seconds=1.5)
    data = json.loads(json.dumps(outcome.as_dict()))
    assert data["status"] == "written"
    assert type(outcome.as_dict()["status"]) is str


def test_statuses_are_the_documented_strings():
    statuses = [str(s) for s in OutcomeStatus]
    assert statuses == ["written", "duplicate", "skipped", "rejected", "missing", "fanned_out"]


def test_summarise_counts_each_status():
    outcomes = [
        Outcome(OutcomeStatus.WRITTEN, "b", "a.tif"),
        Outcome(OutcomeStatus.WRITTEN, "b", "c.tif"),
        Outcome(OutcomeStatus.REJECTED, "b", "d.tif", detail="3 bands"),
    ]
    summary = summarise(outcomes)
    assert summary["counts"] == {"written": 2, "rejected": 1}
    assert [o["input_key"] for o in summary["outcomes"]] == ["a.tif", "c.tif", "d.tif"]


@pytest.mark.parametrize(
    ("outcome", "line"),
    [
        (
            Outcome(OutcomeStatus.WRITTEN, "b", "a/s.tif", "a/s.npy", "4 tiles", 1.5),
            "written: s3://b/a/s.tif -> a/s.npy (1.50 s) 4 tiles",
        ),
        (
            Outcome(OutcomeStatus.SKIPPED, "b", "a/s.txt", detail="not an input suffix"),
            "skipped: s3://b/a/s.txt (0.00 s) not an input suffix",
        ),
    ],
)
def test_describe_is_one_line(outcome, line):
    assert describe(outcome) == line


def test_only_rejections_are_warnings():
    assert log_level(Outcome(OutcomeStatus.REJECTED, "b", "k")) == logging.WARNING
    assert {log_level(Outcome(s, "b", "k")) for s in OutcomeStatus if s is not OutcomeStatus.REJECTED} == {logging.INFO}
