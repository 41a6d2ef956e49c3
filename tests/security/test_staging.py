"""The client's staging: the services read only the inbox, so a file elsewhere is copied in."""

from __future__ import annotations

import uuid
from pathlib import Path

from services.client import stage


def test_a_file_in_the_inbox_is_read_in_place_and_one_elsewhere_is_copied_in(tmp_path: Path) -> None:
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    elsewhere.mkdir()
    inside = inbox / "case.pdf"
    inside.write_bytes(b"%PDF-1.7 inside")
    outside = elsewhere / "case.pdf"
    outside.write_bytes(b"%PDF-1.7 outside" * 1000)
    doc = str(uuid.uuid4())
    progress: list[tuple[int, int]] = []
    assert stage(inside, inbox, doc) == inside
    copy = stage(outside, inbox, doc, lambda done, total: progress.append((done, total)))
    assert copy == inbox / "staged" / doc / "case.pdf" and copy.read_bytes() == outside.read_bytes()
    assert progress[-1] == (outside.stat().st_size, outside.stat().st_size)
    assert [p.name for p in copy.parent.iterdir()] == ["case.pdf"]  # no partial file left


def test_a_link_in_the_inbox_to_a_file_elsewhere_is_copied_not_followed_by_the_services(tmp_path: Path) -> None:
    inbox, secret = tmp_path / "inbox", tmp_path / "secret.txt"
    inbox.mkdir()
    secret.write_text("the caller may read this; the services may not")
    (inbox / "link.pdf").symlink_to(secret)
    staged = stage(inbox / "link.pdf", inbox, str(uuid.uuid4()))
    assert staged.resolve().is_relative_to(inbox.resolve()) and not staged.is_symlink()


def test_a_missing_file_is_passed_on_for_the_uploader_to_refuse(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pdf"
    assert stage(missing, tmp_path / "inbox", str(uuid.uuid4())) == missing
