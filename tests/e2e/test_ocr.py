"""Scanned pages in the running saga: a sentence that exists only in a scan's pixels is found by
`uds3 search`, on its page, marked as read by OCR; `uds3 saga show` counts the OCR pages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.client import Client
from services.core.events import DOCUMENT_COMPLETED
from tests.documents import paragraph, scanned_pdf
from tests.e2e.test_bad_input import outcomes
from tests.e2e.test_cli import uds3
from tests.running import Services

pytestmark = pytest.mark.stack

PLANTED = ("The lighthouse keeper of Bremerhaven wrote that the schooner Margarethe ran aground on the "
           "eleventh of November with a cargo of rye.")


def test_a_sentence_only_in_a_scan_is_found_by_search(services: Services, run_dir: Path) -> None:
    folder = run_dir / "ocr"
    folder.mkdir()
    pdf = scanned_pdf(folder, "ledger.pdf", [paragraph(71, 900) + " " + PLANTED], typed=[paragraph(70, 1500)] * 2)

    async def run() -> list:
        async with Client() as client:
            return await outcomes(client, [await client.submit(pdf, title="ocr ledger")])

    (outcome,) = asyncio.run(run())
    assert outcome.event_type == DOCUMENT_COMPLETED, (outcome, services.logs())
    doc = outcome.document_id
    found = uds3("search", "schooner Margarethe aground in November with rye", "--document", doc, "-k", "1", "--json")
    assert found.returncode == 0, found.stderr
    (hit,) = json.loads(found.stdout)
    assert (hit["page"], hit["ocr"]) == (3, True) and hit["ocr_confidence"] >= 80, hit  # the scan, page 3
    assert "Margarethe" in hit["text"]
    shown = uds3("saga", "show", doc)
    assert "3 read, 1 by OCR, 0 without text" in shown.stdout, shown.stdout
