"""Build `plots/template.html`: DVC's plots page with vega, vega-lite and vega-embed inlined (no CDN).

`dvc plots show` writes `dvc_plots/index.html` from an HTML template; DVC's own template loads the
three scripts from cdn.jsdelivr.net, so the page is blank offline. This script takes the same
versions DVC pins (dvc_render/vega.py: vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2) from the npm
registry with `npm pack`, checks each tarball against the sha512 integrity pinned in
`plots/vendor.json`, copies each package's LICENSE to `plots/licenses/`, and inlines each package's
`build/*.min.js` into the template after a comment naming the package, version and licence.
`.dvc/config` points `plots.html_template` at the result. The template keeps DVC's placeholders
`{plot_divs}` and `{refresh_tag}` and drops `{scripts}` (where DVC puts the CDN tags).

Usage (only to change a version; the output is committed):
    python plots/vendor.py            # rebuild plots/template.html and plots/licenses/
    python plots/vendor.py --check    # verify the committed template against vendor.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINS = HERE / "vendor.json"
TEMPLATE = HERE / "template.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega, vega-lite and vega-embed inlined from the npm registry by plots/vendor.py (licences in
         plots/licenses/): this page loads nothing from the network. -->
SCRIPTS
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def script_block(name: str, pin: dict, source: str) -> str:
    """One inline <script>, after a comment with the package, version, licence and sha256."""
    if "</script" in source.lower():
        raise SystemExit(f"error: {name}: the script contains '</script': it cannot be inlined as is")
    digest = hashlib.sha256(source.encode()).hexdigest()
    return (f"    <!-- {name}@{pin['version']} ({pin['license']}, plots/licenses/{name}.LICENSE), "
            f"{pin['file']} sha256 {digest} -->\n    <script>{source}</script>")


def fetch(name: str, pin: dict, dest: Path) -> tuple[str, str]:
    """`npm pack name@version` into `dest`; returns (the min.js text, the LICENSE text)."""
    subprocess.run(["npm", "pack", f"{name}@{pin['version']}", "--pack-destination", str(dest), "--silent"],
                   check=True, capture_output=True)  # fmt: skip
    tgz = next(dest.glob(f"{name}-{pin['version']}.tgz"))
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if integrity != pin["integrity"]:
        raise SystemExit(f"error: {tgz.name}: integrity {integrity} != {pin['integrity']} pinned in {PINS}")
    with tarfile.open(tgz) as tar:
        source = tar.extractfile(f"package/{pin['file']}").read().decode()
        licence = tar.extractfile("package/LICENSE").read().decode()
    return source, licence


def inlined(template: str) -> dict[str, str]:
    """{package: sha256 of its inlined script} read from a built template's comments."""
    out = {}
    for line in template.splitlines():
        line = line.strip()
        if line.startswith("<!-- vega") and " sha256 " in line:
            out[line[5:].split("@")[0]] = line.split(" sha256 ")[1].split()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the committed template against vendor.json")
    args = parser.parse_args(argv)
    pins = json.loads(PINS.read_text())
    if args.check:
        got = inlined(TEMPLATE.read_text())
        want = {name: pin["sha256"] for name, pin in pins.items()}
        if got != want:
            sys.stderr.write(f"error: {TEMPLATE}: inlined scripts {got} != {want} in {PINS}\n")
            return 1
        return 0
    blocks = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pin in pins.items():
            source, licence = fetch(name, pin, Path(tmp))
            (HERE / "licenses").mkdir(exist_ok=True)
            (HERE / "licenses" / f"{name}.LICENSE").write_text(licence)
            pin["sha256"] = hashlib.sha256(source.encode()).hexdigest()
            blocks.append(script_block(name, pin, source))
    TEMPLATE.write_text(PAGE.replace("SCRIPTS", "\n".join(blocks)))
    PINS.write_text(json.dumps(pins, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
