"""`dvc plots show` works offline: the project's HTML template inlines vega, vega-lite and vega-embed.

The page DVC writes with the project's `.dvc/config` (`plots.html_template`) is rendered by headless
Chromium whose every HTTP(S) request goes through a recording proxy on loopback: the page must
request nothing, and its screenshot must show the plots (enough non-white pixels). DVC's own
template, rendered the same way, asks the proxy for cdn.jsdelivr.net and stays blank: the check
tells the two apart.
"""

from __future__ import annotations

import os
import shutil
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI") != "true":
    pytest.skip("Debian's chromium is not installed (.ci/run installs it; under CI=true this fails)",
                allow_module_level=True)  # fmt: skip


class Recorder(socketserver.ThreadingTCPServer):
    """A "proxy" that records the first line of every request Chromium sends it and closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.requests: list[str] = []

        class Handler(socketserver.StreamRequestHandler):
            def handle(inner) -> None:  # noqa: N805 - the handler's own self
                line = inner.rfile.readline(4096).decode(errors="replace").strip()
                if line:
                    self.requests.append(line)

        super().__init__(("127.0.0.1", 0), Handler)


BROWSER_SERVICES = (".google.com", ".googleapis.com", ".gvt1.com")
"""Chromium's own services (network time, component updates, account sign-in), which it calls on start
even with --disable-background-networking (seen here: clients2.google.com, update.googleapis.com,
accounts.google.com): not the page's requests."""


def host(request_line: str) -> str:
    """The host of a proxy request line: `CONNECT host:443 HTTP/1.1` or `GET http://host/path HTTP/1.1`."""
    target = request_line.split()[1]
    return target.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]


def screenshot(page: Path, out: Path) -> list[str]:
    """Render `page` in headless Chromium (5 s of virtual time), PNG to `out`; returns the requests the
    page made (every request through the proxy but Chromium's own `BROWSER_SERVICES`)."""
    assert CHROMIUM is not None, "chromium is not installed: .ci/run installs Debian's chromium"
    recorder = Recorder()
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    try:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-features=NetworkTimeServiceQuerying", "--no-pings",
             f"--user-data-dir={out.parent / 'chromium-profile'}", f"--proxy-server=http://127.0.0.1:{recorder.server_address[1]}",
             "--proxy-bypass-list=<-loopback>", "--window-size=1000,800", "--virtual-time-budget=5000",
             f"--screenshot={out}", page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        recorder.shutdown()
        recorder.server_close()
    return [r for r in recorder.requests if not ("." + host(r)).endswith(BROWSER_SERVICES)]


def ink(png: Path) -> float:
    """Share of pixels that are not (near) white."""
    from PIL import Image

    gray = Image.open(png).convert("L")
    hist = gray.histogram()
    return 1.0 - sum(hist[245:]) / (gray.width * gray.height)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """`dvc plots show` of the project's committed plots: with the project's template, and with DVC's own."""
    out = tmp_path_factory.mktemp("plots")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc", "plots", "show", "reports/plots/roc"]
    subprocess.run([*dvc, "-o", str(out / "ours")], cwd=ROOT, env=env, check=True, capture_output=True)
    default = out / "default.html"
    default.write_text("<!DOCTYPE html><html><head>{refresh_tag}{scripts}</head><body>{plot_divs}</body></html>")
    subprocess.run([*dvc, "-o", str(out / "cdn"), "--html-template", str(default)], cwd=ROOT, env=env, check=True,
                   capture_output=True)  # fmt: skip
    return {"ours": out / "ours" / "index.html", "cdn": out / "cdn" / "index.html"}


def test_the_project_template_is_wired_and_matches_its_pins():
    config = (ROOT / ".dvc" / "config").read_text()
    assert "html_template = ../plots/template.html" in config
    assert subprocess.run([sys.executable, str(ROOT / "plots" / "vendor.py"), "--check"]).returncode == 0
    for name in ("vega", "vega-lite", "vega-embed"):
        assert "Redistribution and use" in (ROOT / "plots" / "licenses" / f"{name}.LICENSE").read_text()


def test_dvc_plots_show_renders_offline_and_requests_nothing(pages, tmp_path):
    html = pages["ours"].read_text()
    assert "cdn.jsdelivr.net" not in html and "<script src=" not in html
    requests = screenshot(pages["ours"], tmp_path / "ours.png")
    assert requests == [], requests
    assert ink(tmp_path / "ours.png") > 0.01  # axes, curves and labels of the ROC plots

    cdn_requests = screenshot(pages["cdn"], tmp_path / "cdn.png")
    assert any("cdn.jsdelivr.net" in r for r in cdn_requests), cdn_requests  # DVC's own page needs the CDN ...
    assert ink(tmp_path / "cdn.png") < 0.001  # ... and is blank without it
