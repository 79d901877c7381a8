"""The wheel carries the status page's files (pyproject's package-data): a coordinator
installed from it serves GET / with no CDN and nothing outside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "distcb" / "server" / "static"


def test_the_wheel_includes_every_file_the_status_page_serves(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "distcb", source / "distcb", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "."]
        + ["-w", str(tmp_path / "wheel")],
        cwd=source,
        check=True,
        capture_output=True,
        env=dict(os.environ, PIP_NO_INDEX="1"),
    )
    (wheel,) = (tmp_path / "wheel").glob("distcb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    served = sorted(p.name for p in STATIC.iterdir())
    assert served == ["login.html", "status.css", "status.html", "status.js"]
    for name in served:
        assert f"distcb/server/static/{name}" in names
    # What the page loads is all there: its script and style sheet, from this server.
    page = (STATIC / "status.html").read_text()
    assert 'src="static/status.js"' in page
    assert 'href="static/status.css"' in page
    # No CDN, no other origin (an inline SVG icon names its XML namespace, fetched by no one).
    svg_namespace = "xmlns=%22http://www.w3.org/2000/svg%22"
    assert "http" not in page.replace("http-equiv", "").replace(svg_namespace, "")
