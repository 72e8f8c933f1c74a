"""The listening page in a real browser: `weaktok report` on the quick demo's folder (the session fixture
``quick_demo``, shared with test_demo.py: no second training), opened from disk in headless Chromium (Debian's
chromium + chromedriver, driven by selenium). No console errors; every player's file exists and Chromium reads
its duration as soundfile does; the first player of every folder plays (its clock advances); every image
decodes; a full-page screenshot is written."""

import base64
import json
import shutil
import struct
from pathlib import Path
from urllib.parse import unquote

import pytest
import soundfile as sf

from tests.helpers import REPO, cpu_env, run, venv_bin

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing or shutil.which("chromium") is None:
        pytest.fail(
            f"{', '.join(missing) or 'chromium'} not found: `make setup` (as root) installs Debian's chromium and "
            "chromium-driver, which this test drives"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.add_argument(
        "--autoplay-policy=no-user-gesture-required"
    )  # play() from the test, no click
    opts.add_argument("--window-size=1280,900")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def test_listening_page_plays_in_chromium(quick_demo, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    out, _ = quick_demo
    r = run([venv_bin("weaktok"), "report", str(out)], env=cpu_env(), cwd=REPO, timeout=120)
    page = (out / "index.html").resolve()
    assert str(page) in r.stdout
    idx = json.loads((out / "eval" / "audio" / "clips.json").read_text())
    n_eval = sum(len(g["clips"]) for g in idx["groups"])
    gens = [json.loads(p.read_text()) for p in sorted((out / "generate").glob("*/generate.json"))]
    n_gen = sum(len(g["outputs"]) + len(g["seed_audio"]) for g in gens)

    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    # every player: metadata loaded (readyState >= HAVE_METADATA), or an error to report
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('audio')].every(a => a.readyState >= 1 || a.error)"
        )
    )
    players = browser.execute_script(
        "return [...document.querySelectorAll('audio')].map(a => "
        "[a.getAttribute('src'), a.readyState, a.duration, a.error && a.error.code])"
    )
    assert (
        len(players) == n_eval + n_gen and n_eval >= 2 * 8
    )  # 2 clips of >= 8 sets, the generated outputs
    for src, state, duration, error in players:
        wav = out / unquote(src)
        assert wav.is_file(), src
        assert error is None and state >= 1, (src, state, error)
        assert abs(duration - sf.info(str(wav)).duration) < 0.05, (src, duration)
    # playing: the first player of each folder (data, uncond, seed, each generate/ mode) decodes and advances
    first = browser.execute_script(
        "const seen = new Map(); for (const a of document.querySelectorAll('audio')) {"
        " const dir = a.getAttribute('src').replace(/[^/]*$/, ''); if (!seen.has(dir)) seen.set(dir, a); }"
        " window._players = [...seen.values()]; window._players.forEach(a => a.play());"
        " return window._players.map(a => a.getAttribute('src'))"
    )
    assert len(first) >= 3 + len(gens), first
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return window._players.every(a => a.currentTime > 0.3)")
    )
    browser.execute_script("window._players.forEach(a => a.pause())")
    images = browser.execute_script(
        "return [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert len(images) >= n_eval + 2  # every clip's spectrogram and the plots
    for src, complete, width in images:
        assert complete and width > 0, src
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    assert "Table 1" in browser.title or "Table 1" in browser.find_element("tag name", "h1").text

    # a full-page screenshot through the DevTools protocol (Chrome's WebDriver captures only the viewport)
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    data = base64.b64decode(shot["data"])
    (tmp_path / "index.png").write_bytes(data)
    width, height = _png_size(data)
    assert width >= 1000 and height > 3000 and len(data) > 100_000, (width, height, len(data))
