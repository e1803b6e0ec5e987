"""Atomic writes: what readers of a run folder see."""

from __future__ import annotations

import os
import stat

from lib.files import atomic_write_text


def test_an_atomically_written_file_has_the_permissions_of_an_ordinary_one(tmp_path):
    old = os.umask(0o022)
    os.umask(old)
    path = atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert path.read_text() == "<html></html>"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old, "a shared run folder's readers could not open it"
    assert not list(tmp_path.glob(".*.tmp")), "the temp file was left behind"
