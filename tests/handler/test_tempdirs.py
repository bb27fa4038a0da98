"""handler/tempdirs.py: only our own stale job directories are swept, nothing else in TMPDIR."""

from __future__ import annotations

import os
import time

from handler.settings import Settings
from handler.tempdirs import is_ours, sweep_at_startup, sweep_stale_dirs

HOUR = 3600


def aged(path, seconds: float):
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_only_our_old_job_dirs_are_removed(tmp_path):
    # GIVEN TMPDIR holding old and fresh job dirs of ours, and things that are not ours
    old_event = tmp_path / "rasterfn-abc_1234"
    old_http = tmp_path / "rasterfn-http-zz99yy88"
    for path in (old_event, old_http):
        path.mkdir()
        (path / "input.tif").write_bytes(b"x")
        aged(path, 2 * HOUR)
    fresh = tmp_path / "rasterfn-fresh123"
    fresh.mkdir()
    cache = tmp_path / "rasterfn-model"
    cache.mkdir()
    aged(cache, 2 * HOUR)
    others = [tmp_path / "someone-else", tmp_path / "rasterfn-looks-like-ours-but-longer"]
    for path in others:
        path.mkdir()
        aged(path, 2 * HOUR)
    a_file = tmp_path / "rasterfn-abcdefgh"
    a_file.write_bytes(b"a file, not a job dir")
    aged(a_file, 2 * HOUR)
    # WHEN swept with a one-hour age
    removed = sweep_stale_dirs(tmp_path, HOUR)
    # THEN only the two old job dirs are gone
    assert removed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "rasterfn-fresh123",
            "rasterfn-model",
            "someone-else",
            "rasterfn-looks-like-ours-but-longer",
            "rasterfn-abcdefgh",
        ]
    )


def test_the_model_cache_is_kept_even_with_a_job_like_name(tmp_path):
    cache = tmp_path / "rasterfn-cache123"
    cache.mkdir()
    aged(cache, 5 * HOUR)
    settings = Settings(tmp_dir=tmp_path, model_cache_dir=cache, stale_tmp_minutes=60)
    assert sweep_at_startup(settings) == 0 and cache.is_dir()


def test_a_missing_tmpdir_is_not_an_error(tmp_path):
    assert sweep_stale_dirs(tmp_path / "nope", HOUR) == 0


def test_names():
    assert is_ours("rasterfn-a1b2c3d4") and is_ours("rasterfn-http-a1b2c3d4")
    assert not is_ours("rasterfn-model") and not is_ours("rasterfn-a1b2c3d4/../x") and not is_ours("other-a1b2c3d4")
