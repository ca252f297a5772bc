"""A headless Chromium for the tests, driven over the DevTools protocol on a pipe (no Python
package needed): open a page, collect console errors, check its images, take a screenshot.

`chromium_binary()` finds the browser (VIT_EXPLAIN_CHROMIUM, else chromium, chromium-browser,
google-chrome on PATH); tests skip when there is none. Debian: `apt-get install -y chromium`.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# the flags that work on a sandboxed machine without a network (no background connections)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def chromium_binary() -> str | None:
    override = os.environ.get("VIT_EXPLAIN_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One Chromium process; `Browser().open(path)` -> a PageReport. Use as a context manager."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        self.binary = binary or chromium_binary()
        if self.binary is None:
            raise RuntimeError("no chromium binary")
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory(prefix="vxe-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire():  # the DevTools pipe: the browser reads fd 3 and writes fd 4
            read, write = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile.name}", "--remote-debugging-pipe",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, pass_fds=(3, 4))  # kept open: the child's fds are closed after wire()
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self.send("Browser.close", wait=False)
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self.profile.cleanup()

    # ---- the protocol -------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, wait: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        if not wait:
            return {}
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for index, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(index)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)

    # ---- a page -------------------------------------------------------------------------

    def open(self, path: Path, width: int = 1280, height: int = 900) -> "PageReport":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        self.wait_for("Page.loadEventFired", session)
        images = self.send("Runtime.evaluate", {
            "expression": "Promise.all([...document.images].map(i => i.decode().then(() => [i.naturalWidth, "
                          "i.naturalHeight], () => [0, 0]))).then(s => JSON.stringify(s))",
            "awaitPromise": True, "returnByValue": True}, session=session)["result"]["value"]
        text = self.send("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                              "returnByValue": True}, session=session)["result"]["value"]
        shot = self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        self.send("Runtime.evaluate", {"expression": "1"}, session=session)  # drains late console events
        errors = [describe(event) for event in self.events
                  if event.get("sessionId") == session and is_error(event)]
        self.send("Target.closeTarget", {"targetId": target})
        return PageReport([tuple(size) for size in json.loads(images)], errors, base64.b64decode(shot), text)


def is_error(event: dict) -> bool:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        return True
    if method == "Runtime.consoleAPICalled":
        return params.get("type") in ("error", "assert")
    if method == "Log.entryAdded":
        return params.get("entry", {}).get("level") == "error"
    return False


def describe(event: dict) -> str:
    params = event.get("params", {})
    if event.get("method") == "Log.entryAdded":
        entry = params.get("entry", {})
        return f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
    if event.get("method") == "Runtime.exceptionThrown":
        return str(params.get("exceptionDetails", {}).get("exception", {}).get("description")
                   or params.get("exceptionDetails", {}).get("text"))
    return " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))


class PageReport:
    def __init__(self, images: list[tuple[int, int]], errors: list[str], screenshot: bytes, text: str):
        self.images = images          # (naturalWidth, naturalHeight) of every <img>, 0 when it did not decode
        self.errors = errors          # console errors, exceptions, and the browser's error log (CSP, loads)
        self.screenshot = screenshot  # PNG of the viewport
        self.text = text              # the page's visible text
