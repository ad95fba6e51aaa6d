"""A small Chrome DevTools Protocol client: open a page in headless Chromium and report what a
reader would see go wrong (console errors, uncaught exceptions, failed loads, broken images).

Chromium is started with ``--remote-debugging-port=0`` and the port it picked is read from the
``DevToolsActivePort`` file it writes into its (throwaway) profile folder; the page target is
driven over one websocket. Only what the report tests need: no frames, no network stubs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

CHROMIUM = "chromium"
START_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 30.0

_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(img => ({
  alt: img.alt, src: img.currentSrc.slice(0, 80), complete: img.complete,
  width: img.naturalWidth, height: img.naturalHeight})))"""


class BrowserError(RuntimeError):
    """Chromium did not start, a DevTools command failed, or a page did not load in time."""


def chromium_path() -> str | None:
    """Where ``chromium`` is on PATH, or None."""
    return shutil.which(CHROMIUM)


@dataclass(frozen=True)
class PageReport:
    """What loading one page produced.

    ``errors``: one line per console error, uncaught exception, error log entry or failed
    request; ``images``: per ``<img>`` its ``alt``, the start of its ``src``, ``complete`` and
    natural size.
    """

    url: str
    errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        """Images that did not finish loading or decoded to nothing."""
        return [i for i in self.images if not (i["complete"] and i["width"] > 0)]


class _Session:
    """One websocket to a page target: numbered commands, events kept until read."""

    def __init__(self, url: str) -> None:
        # Chromium refuses websocket clients that send an Origin it was not told to allow.
        self._ws = websocket.create_connection(url, timeout=LOAD_TIMEOUT_S, suppress_origin=True)
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self._ws.close()

    def _receive(self, deadline: float) -> dict[str, Any]:
        self._ws.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            message = json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException as err:
            raise BrowserError("no message from Chromium before the deadline") from err
        if "id" not in message:
            self.events.append(message)
        return message

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        command_id = self._next_id
        self._ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while True:
            message = self._receive(deadline)
            if message.get("id") == command_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_for(self, method: str, timeout_s: float) -> dict[str, Any]:
        """The first event ``method`` (already received or coming)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._receive(deadline)
            if message.get("method") == method:
                return message


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """One line per event that shows a fault in the page."""
    lines = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            lines.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            lines.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            lines.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            lines.append(f"load failed: {params.get('errorText')} ({params.get('type')})")
    return lines


class Browser:
    """A running headless Chromium; use :func:`open_browser`."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _page_target(self) -> str:
        base = f"http://127.0.0.1:{self.port}"
        targets = requests.get(f"{base}/json/list", timeout=5).json()
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            pages = [requests.put(f"{base}/json/new?about:blank", timeout=5).json()]
        return pages[0]["webSocketDebuggerUrl"]

    def load(self, url: str, timeout_s: float = LOAD_TIMEOUT_S) -> PageReport:
        """Navigate the page to ``url``, wait for its load event, and report what went wrong
        and the state of every image."""
        session = _Session(self._page_target())
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                session.send(f"{domain}.enable")
            session.events.clear()  # messages left from an earlier page
            navigation = session.send("Page.navigate", url=url)
            if navigation.get("errorText"):
                raise BrowserError(f"{url}: {navigation['errorText']}")
            session.wait_for("Page.loadEventFired", timeout_s)
            result = session.send("Runtime.evaluate", expression=_IMAGES_JS, returnByValue=True)
            images = json.loads(result["result"]["value"])
            # Messages posted while the load event was dispatched arrive just after it.
            session.send("Runtime.evaluate", expression="0")
            return PageReport(url=url, errors=_problems(session.events), images=images)
        finally:
            session.close()


def _read_port(profile: Path, process: subprocess.Popen[bytes], log: Path) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(
                f"chromium exited {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        lines = marker.read_text().splitlines() if marker.is_file() else []
        if lines and lines[0].strip().isdigit():
            return int(lines[0])
        time.sleep(0.1)
    raise BrowserError(f"chromium wrote no {marker} in {START_TIMEOUT_S:.0f} s")


@contextmanager
def open_browser() -> Iterator[Browser]:
    """Headless Chromium with a throwaway profile, stopped (with its child processes) on exit.

    Raises:
        BrowserError: ``chromium`` is not on PATH or did not start.
    """
    path = chromium_path()
    if path is None:
        raise BrowserError(f"{CHROMIUM} is not on PATH")
    with tempfile.TemporaryDirectory(
        prefix="cxr-gaze-chromium-", ignore_cleanup_errors=True
    ) as tmp:
        profile, log = Path(tmp) / "profile", Path(tmp) / "chromium.log"
        command = [
            path,
            "--headless=new",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--no-sandbox",  # the tests may run as root, where the sandbox cannot start
            "--no-first-run",
            "--disable-gpu",
            "--disable-extensions",
            "about:blank",
        ]
        with log.open("wb") as out:
            # Its own process group: the renderer and GPU processes go when it is stopped.
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            yield Browser(_read_port(profile, process, log))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            # Renderers it left behind are still in its group.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
