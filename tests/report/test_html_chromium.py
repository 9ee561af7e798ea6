"""The audit's HTML report in real headless Chromium (Debian's `chromium`), driven over the
DevTools protocol on a pipe: it renders without console errors, every image loads, and a
screenshot is kept as a test artifact."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from bastion.audit import run_audit
from bastion.audit_checks import Plot
from bastion.config import load_config
from bastion.demo.run import build_example
from bastion.report.html import to_html

TIMEOUT = 30.0


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe: JSON messages
    separated by NUL, commands written to the browser's fd 3, replies read from its fd 4."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes() -> None:  # runs in the child: put the pipe ends on fds 3 and 4
            high_r, high_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        args = [chromium, "--headless", "--remote-debugging-pipe", "--no-first-run",
                "--disable-gpu", "--no-default-browser-check", "--window-size=1200,900",
                f"--user-data-dir={profile}"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        self.process = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=wire_pipes,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.events: list[dict[str, Any]] = []
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                self._replies.put(json.loads(raw))

    def _next(self) -> dict[str, Any]:
        try:
            return self._replies.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError("Chromium did not answer in time") from None

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._next()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._next()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close")
        finally:
            self.process.wait(timeout=TIMEOUT)
            os.close(self._to_browser)


def _errors(events: list[dict[str, Any]]) -> list[Any]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        thrown = method == "Runtime.exceptionThrown"
        if thrown or (method == "Runtime.consoleAPICalled"
                      and params.get("type") in ("error", "assert")):
            found.append(params)
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(params["entry"])
    return found


def _check_plot(fmt: str) -> bytes:
    """A real matplotlib plot (PNG or SVG), as a check would attach it."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3, 2))
    figure.subplots().plot([0, 1, 2], [0, 1, 4])
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt)
    return buffer.getvalue()


def test_html_report_renders_in_chromium(tmp_path: Path,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (.ci/run installs it)"
    example = build_example(tmp_path / "demo", torch_checkpoint=False)
    result = run_audit(load_config(example.config), out=tmp_path / "out", jobs=1)
    scan = result.outcome("scan")
    scan.result.plots.append(Plot("PNG plot", "image/png", _check_plot("png"), "y = x²"))
    scan.result.plots.append(Plot("SVG plot", "image/svg+xml", _check_plot("svg"), "y = x²"))
    html = to_html(result, "bastion audit")
    assert "http://" not in html and "https://" not in html.replace(
        "https://app.example", "")  # nothing to fetch
    page = tmp_path / "audit.html"
    page.write_text(html, encoding="utf-8")

    browser = DevTools(chromium, tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session)
        browser.send("Page.navigate", session, url=page.as_uri())
        browser.wait_for("Page.loadEventFired")
        images = browser.send(
            "Runtime.evaluate", session, returnByValue=True,
            expression="[...document.images].map(i => ({alt: i.alt, complete: i.complete, "
                       "width: i.naturalWidth, src: i.src.slice(0, 22)}))",
        )["result"]["value"]
        verdict = browser.send("Runtime.evaluate", session, returnByValue=True,
                               expression="document.getElementById('verdict').innerText")
        shot = browser.send("Page.captureScreenshot", session, format="png",
                            captureBeyondViewport=True)
    finally:
        browser.close()

    # Kept under pytest's temporary folder; CI can ask for a copy where it collects artifacts.
    artifacts = Path(os.environ.get("BASTION_TEST_ARTIFACTS") or
                     tmp_path_factory.mktemp("artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "audit-report.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    assert _errors(browser.events) == []
    # The score chart, the evasion check's robustness curve, the extraction check's fidelity
    # curve, the membership check's ROC curve, the poisoning check's score histogram and the
    # two plots added above.
    assert [i["alt"] for i in images][1:5] == ["Robustness curve", "Model extraction",
                                               "Membership inference ROC",
                                               "Poisoning detector scores"]
    for image in images:
        assert image["complete"] and image["width"] > 0, image
    assert [i["src"][:14] for i in images] == ["data:image/png", "data:image/png",
                                                "data:image/png", "data:image/png",
                                                "data:image/png",
                                                "data:image/png", "data:image/svg"]
    assert verdict["result"]["value"].startswith("Gate failed: 11 finding(s)")
