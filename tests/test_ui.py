"""The MLflow UI (`clsweep ui`) shows a sweep's parent run with its trial runs nested under it.

Drives headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ended by a NUL byte on file descriptors 3 and 4), so nothing beyond the browser is needed.
It installs nothing itself (``make test`` does, through scripts/test-tools.sh): without a Chromium
binary (Debian: ``apt-get install chromium``) it skips, saying so.
Set ``CLSWEEP_UI_SCREENSHOT=docs/ui.png`` to keep the screenshot (the README shows it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import mlflow_sweeps as H
from mlflow_sweeps import ray_down_after_module, sqlite_sweep_folder  # noqa: F401 - fixtures
from sweeps import tracking as T
from sweeps import mlflow_store as M

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; skips (before the sweep and the UI start) when there is none."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless Chromium on this machine (looked for {', '.join(BROWSERS)}); install it with: "
                f"apt-get install chromium (make test does, as root)")


class Chromium:
    """Headless Chromium driven through the DevTools protocol on a pipe."""

    def __init__(self, binary: str, width: int = 1500, height: int = 900):
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()
        self._profile = tempfile.TemporaryDirectory(prefix="clsweep-chromium-")

        def pipes_on_3_and_4():
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}",
             "about:blank"],
            preexec_fn=pipes_on_3_and_4, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._id = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: str | None = None, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium exited during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, **params):
        return self.call(method, self._session, **params)

    def evaluate(self, expression: str):
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *texts: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t in self.text() for t in texts):
                return True
            time.sleep(0.25)
        return False

    def click(self, selector: str) -> bool:
        return bool(self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                                  f"if (e) e.click(); return !!e; }})()"))

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()


@pytest.fixture
def mlflow_ui(sqlite_sweep_folder, tmp_path):
    """`clsweep ui` in the sweep's working directory: the default store, on 127.0.0.1."""
    port = H.free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = tmp_path / "ui.log"
    process = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "ui", "--port", str(port)], cwd=sqlite_sweep_folder,
                               env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        H.wait_healthy(url, process, log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_mlflow_ui_shows_the_sweep_with_its_trials_nested(chromium, sqlite_sweep_folder, mlflow_ui, tmp_path):
    from mlflow import MlflowClient

    identity = json.loads((H.sweep_folder(sqlite_sweep_folder) / T.STATE_FILE).read_text())
    client = MlflowClient(identity["tracking_uri"])
    experiment = client.get_experiment_by_name("tiny_ewc")
    store = T.Store(identity["tracking_uri"], "tiny_ewc")
    parent = store.find_run({T.SWEEP_ID_TAG: identity["sweep_id"], T.KIND_TAG: "sweep"})
    runs = store.trial_runs(identity["sweep_id"]).values()
    trials = sorted(r.info.run_name for r in runs)
    assert len(trials) == 6
    for run in runs:  # named by the searched value, and how it ended when that was early
        status, seen = run.data.tags[T.STATUS_TAG], run.data.tags[T.TASKS_SEEN_TAG]
        name = run.info.run_name
        assert name.startswith(f"stopped {seen}/5 · lambda=") == (status == M.STOPPED_EARLY), name
        assert name.startswith(f"failed {seen}/5 · lambda=") == (status == M.FAILED), name
        assert name.startswith("lambda=") == (status == T.FINISHED), name
    assert {T.FINISHED, M.STOPPED_EARLY} <= {r.data.tags[T.STATUS_TAG] for r in runs}  # (lambda 2.45e4 diverges)

    browser = Chromium(chromium)
    try:
        browser.page("Page.navigate", url=T.experiment_url(mlflow_ui, experiment.experiment_id))
        # the experiment's own page opens on its runs table, not on MLflow 3's GenAI overview
        assert browser.wait_for_text(parent.info.run_name, "Run Name"), f"runs not shown:\n{browser.text()[:2000]}"
        assert "No data available" not in browser.text()
        assert not any(name in browser.text() for name in trials), "trial runs should sit under the parent"
        browser.click('button[data-component-id="mlflow.assistant.chat_panel.close"]')  # more room for the table
        assert browser.click('button[data-component-id*="runnamecellrenderer"]'), "no expander on the parent row"
        assert browser.wait_for_text(*trials), f"nested trial runs not shown:\n{browser.text()[:2000]}"
        time.sleep(0.5)  # let the table settle for the picture
        screenshot = tmp_path / "ui.png"
        browser.screenshot(screenshot)
    finally:
        browser.close()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("CLSWEEP_UI_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["CLSWEEP_UI_SCREENSHOT"])
