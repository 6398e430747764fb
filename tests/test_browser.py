"""The demo page in a real browser: headless Chromium (Debian's package, driven by Playwright) against the real
server on loopback with a small random model. It types, speaks, interrupts, and reads from the browser's own
WebRTC statistics that decoded video frames and audio samples arrive."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.test_server import Served, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
]
TEXT = "Hello there, how are you today?"  # six words: five go out as typed, the last one on Speak
LONG_TEXT = "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen."
TIMEOUT_MS = 20_000

# The inbound RTP statistics of the page's peer connection, by kind.
INBOUND_STATS = """async () => {
    const inbound = {};
    (await window.pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp") inbound[r.kind] = r; });
    return inbound;
}"""


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def demo_page(served: Served, profile: Path) -> Iterator[Page]:
    """The demo page of `served` open in headless Chromium (a fresh `profile` folder); on leaving, the browser
    closes and the test fails if the page raised an uncaught error."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(served.url)
            yield page
        finally:
            browser.close()
    assert not page_errors, page_errors


def media_arrived(page: Page) -> bool:
    inbound = page.evaluate(INBOUND_STATS)
    video, audio = inbound.get("video", {}), inbound.get("audio", {})
    heard = audio.get("totalSamplesReceived", 0) > 0 or audio.get("totalAudioEnergy", 0) > 0
    return video.get("framesDecoded", 0) > 0 and heard


@pytest.mark.slow
def test_the_demo_page_plays_the_avatar_and_shows_live_figures(tmp_path: Path) -> None:
    with running_server() as served, demo_page(served, tmp_path / "profile") as page:
        page.wait_for_function("document.querySelector('#voice').options.length > 0")

        # 1. Start: a session, its websocket and a WebRTC viewer.
        page.click("#start")
        page.wait_for_function("window.pc && window.pc.connectionState === 'connected'", timeout=TIMEOUT_MS)
        hosted = next(iter(served.registry.sessions.values()))
        assert hosted.webrtc_viewers == 1 and hosted.websockets == 1

        # 2. Type: each finished word goes out as it is typed, the rest on Speak.
        page.click("#text")
        page.keyboard.type(TEXT, delay=15)
        assert page.evaluate("window.sonate.state.nextId - 1") == 5
        page.click("#speak")
        assert page.evaluate("window.sonate.state.nextId - 1") == 6

        # 3. The overlay shows the time to first audio; the browser decodes the avatar's frames and sound.
        page.wait_for_function("/^\\d+ ms$/.test(document.querySelector('#ttfa').textContent)", timeout=TIMEOUT_MS)
        wait_until(lambda: media_arrived(page), what="decoded video frames and audio samples")
        inbound = page.evaluate(INBOUND_STATS)
        assert inbound["video"]["framesDecoded"] > 0
        assert inbound["audio"]["totalSamplesReceived"] > 0 or inbound["audio"]["totalAudioEnergy"] > 0
        page.wait_for_function(f"document.querySelector('#transcript').textContent === {json.dumps(TEXT + ' ')}")
        page.wait_for_function("document.querySelector('#rtf').textContent !== '–'", timeout=TIMEOUT_MS)
        assert page.evaluate("document.querySelector('video').paused") is False
        assert page.locator("#errors .error").count() == 0

        # 4. Interrupt a long sentence once it plays: the unspoken rest is struck out.
        page.click("#text")
        page.keyboard.type(LONG_TEXT)
        page.click("#speak")
        page.wait_for_function(f"window.sonate.state.heard > {len(TEXT) + 1}", timeout=TIMEOUT_MS)
        page.click("#interrupt")
        page.wait_for_selector("#transcript .cut", timeout=TIMEOUT_MS)

        # 5. Errors show in the page: an upload that is not audio.
        page.set_input_files("#voice-file", {"name": "noise.wav", "mimeType": "audio/wav", "buffer": b"not audio"})
        page.wait_for_selector("#errors .error code:text('invalid_audio')", timeout=TIMEOUT_MS)

        # 6. Leave: the viewer and the session are gone from the server.
        page.click("#leave")
        wait_until(lambda: not served.registry.sessions, what="the session to close")
        page.wait_for_function("window.pc === null && !document.querySelector('#start').disabled")
