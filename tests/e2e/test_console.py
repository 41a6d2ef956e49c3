"""The web console in a real browser (Debian's headless Chromium, driven by Selenium through
Debian's chromedriver): a saga advancing to Completed without a reload, a failing one with its
compensation chain, a dead letter re-driven from the page. A screenshot of each is kept in the
run's folder (`<run dir>/console/`)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.ops import Letter, read_letters
from services.client import Client
from services.core import topics
from services.core.config import REPO_ROOT, Settings
from tests.documents import paragraph, pdf_file
from tests.e2e.test_dead_letters import letters_for, produce, unknown_fingerprint_frame
from tests.running import Services

pytestmark = pytest.mark.stack
TOKEN = f"console-{uuid.uuid4()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def console(services: Services, run_dir: Path) -> Iterator[str]:
    port = free_port()
    log = open(run_dir / "console.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "console", "--port", str(port)],
                            cwd=REPO_ROOT, env={**os.environ, **services.env, "UDS3_CONSOLE_TOKEN": TOKEN},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (run_dir / "console.log").read_text()
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(20)
    log.close()


@pytest.fixture(scope="module")
def browser(run_dir: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    (run_dir / "console").mkdir(exist_ok=True)
    yield driver
    driver.quit()


def until(check: object, timeout: float = 120, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()  # type: ignore[operator]
        except Exception:  # the page is re-rendering: ask again
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def submit(path: Path, title: str) -> str:
    async def run() -> str:
        async with Client() as client:
            return (await client.submit(path, title=title)).document_id

    return asyncio.run(run())


def text_of(driver: object, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)  # type: ignore[attr-defined]


def test_a_saga_advances_to_completed_on_the_page_without_a_reload(
    console: str, browser: object, run_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver: object = browser
    driver.get(console)  # type: ignore[attr-defined]
    until(lambda: text_of(driver, "#live") == "live", 30, "the live stream")
    pdf = pdf_file(run_dir, "console-case.pdf", [paragraph(40 + p, 2500) for p in range(12)])
    doc = submit(pdf, "console case")
    marker = driver.execute_script("window.notReloaded = true; return window.notReloaded")  # type: ignore[attr-defined]
    assert marker is True
    driver.execute_script(f"location.hash = '#/saga/{doc}'")  # type: ignore[attr-defined]
    seen: list[str] = []

    def completed() -> bool:
        status = text_of(driver, "#saga-status")
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == "Completed"

    until(completed, 180, "Completed on the saga page")
    assert driver.execute_script("return window.notReloaded") is True  # type: ignore[attr-defined]
    assert "Running" in seen, seen  # it was watched advancing, not found finished
    steps = until(lambda: [text_of(driver, f'tr[data-step="{s}"] .step-status') for s in
                           ("Upload", "Integrity", "Security", "Vectors", "Graph", "Relational")], 10, "the steps")
    assert steps == ["done"] * 6
    embedded = until(lambda: driver.find_element(By.ID, "vector-progress").get_attribute("value") == "12",  # type: ignore[attr-defined]
                     30, "the embedding bar at 12 of 12 pages")
    assert embedded
    driver.save_screenshot(str(run_dir / "console" / "completed.png"))  # type: ignore[attr-defined]
    driver.execute_script("location.hash = '#/'")  # type: ignore[attr-defined]
    row = until(lambda: text_of(driver, f'tr[data-doc="{doc}"] .status'), 30, "the list's row")
    assert row == "Completed"


def test_a_failing_saga_shows_its_compensation_chain(console: str, browser: object, run_dir: Path) -> None:
    driver: object = browser
    pdf = pdf_file(run_dir, "console-fail.pdf", [paragraph(90, 1200)])
    doc = submit(pdf, "console fail-graph")  # the run's faults: the graph step fails for good
    driver.get(f"{console}#/saga/{doc}")  # type: ignore[attr-defined]
    until(lambda: text_of(driver, "#saga-status") == "Compensated", 120, "Compensated")
    states = {s: text_of(driver, f'tr[data-step="{s}"] .step-status') for s in
              ("Upload", "Integrity", "Security", "Vectors", "Graph", "Relational")}
    assert states == {"Upload": "compensated", "Integrity": "compensated", "Security": "compensated",
                      "Vectors": "compensated", "Graph": "failed", "Relational": "-"}, states
    assert "Graph: injected permanent fault in graph" in text_of(driver, "main")
    driver.save_screenshot(str(run_dir / "console" / "compensated.png"))  # type: ignore[attr-defined]


def test_a_dead_letter_is_redriven_from_the_page(console: str, browser: object, run_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    driver: object = browser
    settings = Settings()
    key = str(uuid.uuid4())
    partition, offset = asyncio.run(produce(settings, key, unknown_fingerprint_frame()))
    assert asyncio.run(letters_for(settings, (topics.SUBMISSIONS.name, partition, offset), 1))
    driver.get(f"{console}#/dlq")  # type: ignore[attr-defined]
    row = until(lambda: [r for r in driver.find_elements(By.CSS_SELECTOR, "#letters tr")  # type: ignore[attr-defined]
                         if key in r.text], 30, "the letter's row")[0]  # type: ignore[index]
    assert "unknown schema" in row.text or "fingerprint" in row.text, row.text
    driver.find_element(By.ID, "token").send_keys(TOKEN)  # type: ignore[attr-defined]
    row.find_element(By.CSS_SELECTOR, "button.redrive").click()
    result = until(lambda: row.find_element(By.CSS_SELECTOR, ".result").text, 30, "the re-drive's answer")
    assert str(result).startswith("re-driven to ") and f":{partition}@{offset}" in str(result), result
    driver.save_screenshot(str(run_dir / "console" / "dead-letter.png"))  # type: ignore[attr-defined]

    async def parked_again() -> list[Letter]:  # the bytes went back to their topic: parked there once more
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            again = [x for x in await read_letters(settings) if x.key == key.encode()
                     and x.origin[:2] == (topics.SUBMISSIONS.name, partition) and x.origin[2] > offset]
            if again:
                return again
            await asyncio.sleep(1)
        return []

    assert asyncio.run(parked_again())


def test_search_shows_the_page_and_the_sentence(console: str, browser: object, run_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    planted = "The ferry Nordlicht left Kiel at dawn with forty barrels of herring for the market at Lübeck."
    pages = [paragraph(120 + p, 1500) for p in range(6)]
    pages[4] = paragraph(125, 600) + ". " + planted
    pdf = pdf_file(run_dir, "console-search.pdf", pages)

    async def ingest() -> str:
        async with Client() as client:
            sub = await client.submit(pdf, title="console search")
            assert (await client.wait(sub.document_id, sub.submitted_at_ms)).event_type == "DocumentCompleted"
            return sub.document_id

    doc = asyncio.run(ingest())
    driver: object = browser
    driver.get(f"{console}#/search")  # type: ignore[attr-defined]
    box = until(lambda: driver.find_element(By.ID, "q"), 30, "the search box")  # type: ignore[attr-defined]
    box.send_keys("Which ferry left Kiel with barrels of herring?")  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "#search button").click()  # type: ignore[attr-defined]
    first = until(lambda: driver.find_elements(By.CSS_SELECTOR, "#hits tr")[1], 60, "a hit")  # type: ignore[attr-defined]
    assert doc[:8] in first.text and first.find_element(By.CSS_SELECTOR, ".page").text == "5", first.text  # type: ignore[attr-defined]
    assert "Nordlicht left Kiel" in first.find_element(By.CSS_SELECTOR, ".sentence").text  # type: ignore[attr-defined]
    driver.save_screenshot(str(run_dir / "console" / "search.png"))  # type: ignore[attr-defined]
