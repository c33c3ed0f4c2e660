"""Load a local page in headless Chromium over the DevTools protocol (no Python packages needed).

    from chromium import find_chromium, load_page
    page = load_page(find_chromium(), path, "document.images.length", screenshot=png_path)
    page.errors        # console errors, uncaught exceptions, failed loads
    page.requests      # every URL the page asked for
    page.value         # the expression's value once the page has loaded

Chromium runs with ``--remote-debugging-pipe``: commands go in on file descriptor 3 and replies
come out on 4, as NUL-terminated JSON, so no port and no websocket client are involved.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Page:
    value: object = None
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, deadline: float) -> None:
        self.write_fd, self.read_fd, self.deadline = write_fd, read_fd, deadline
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _message(self) -> dict:
        while b"\0" not in self.buffer:
            readable, _, _ = select.select([self.read_fd], [], [], max(0.0, self.deadline - time.monotonic()))
            if not readable:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._message()
            if event.get("method") == method:
                return event
            self.events.append(event)


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            errors.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            errors.append(f"load failed: {params.get('errorText')}")
    return errors


def load_page(
    chromium: str, path: Path, expression: str, screenshot: Path | None = None,
    width: int = 1280, height: int = 900, timeout: float = 60.0,
) -> Page:
    """Open ``path``, wait for its load event, evaluate ``expression``; collect what went wrong."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()

        def onto_3_and_4() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
            os.dup2(high[0], 3), os.dup2(high[1], 4)  # dup2 leaves them open across exec

        child = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=onto_3_and_4,
        )
        os.close(to_child), os.close(from_child)
        pipe = _Pipe(from_parent, to_parent, time.monotonic() + timeout)
        try:
            target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session)
            pipe.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
            pipe.call("Page.navigate", session, url=Path(path).resolve().as_uri())
            pipe.wait_for("Page.loadEventFired")
            value = pipe.call("Runtime.evaluate", session, expression=expression, returnByValue=True,
                              awaitPromise=True)["result"].get("value")
            if screenshot is not None:
                shot = pipe.call("Page.captureScreenshot", session, format="png")
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            requests = [e["params"]["request"]["url"] for e in pipe.events
                        if e.get("method") == "Network.requestWillBeSent"]
            return Page(value, _errors(pipe.events), requests)
        finally:
            try:
                pipe.call("Browser.close")
            except (RuntimeError, OSError, TimeoutError):
                pass
            os.close(from_parent), os.close(to_parent)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
