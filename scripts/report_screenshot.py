"""Take the README's screenshot of the HTML report: docs/report-screenshot.png.

    python scripts/report_screenshot.py [--out docs/report-screenshot.png]

Records the Django example (scripts/record_examples.py), writes its report, opens it in a
headless Chromium (Debian's chromium and chromium-driver), selects the N+1 request, clicks one
of its queries, and saves the window.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1440,900",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report-screenshot.png")
    args = parser.parse_args()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import Select
    except ImportError:
        print("report_screenshot: pip install selenium", file=sys.stderr)
        return 1
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None or not Path("/usr/bin/chromedriver").exists():
        print("report_screenshot: apt-get install chromium chromium-driver", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="stagetrace-shot-") as tmp:
        recording = Path(tmp) / "django.jsonl"
        page = Path(tmp) / "report.html"
        recorder = ROOT / "scripts" / "record_examples.py"
        subprocess.run([sys.executable, str(recorder), "django", str(recording)], check=True)
        subprocess.run(
            [sys.executable, "-m", "stagetrace", "report", str(recording), "-o", str(page)],
            check=True,
        )
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in (*FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(page.as_uri())
            Select(driver.find_element("id", "f-route")).select_by_value("api/books/")
            driver.find_elements("css selector", "#list-body tr")[0].click()
            driver.find_element("css selector", "#detail-pane .finding").click()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    print(f"report_screenshot: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
