"""Headless Chromium for the web labelling tests, and the README screenshot of the page.

The browser is Debian's ``chromium`` with its ``chromedriver`` (``make test`` installs
both when they are missing), driven by Selenium through the driver's path, so Selenium
Manager never downloads a browser or a driver.

    .venv/bin/python tests/browser.py docs/labelling_page.png   # retake the README screenshot
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def start_chromium(width: int = 1200, height: int = 860):
    """A headless Chromium WebDriver; fails (never skips) with the set-up command when the browser is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found: the browser tests need Debian's chromium and chromium-driver; "
            "`make test` installs them (or: apt-get install -y chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def screenshot(out: Path) -> None:
    """Serve a store of realistic queries from the built-in task and save the page as `out`."""
    from selenium.webdriver.support.ui import WebDriverWait

    from llm_gym.core.preferences import Query
    from llm_gym.feedback.store import PreferenceStore
    from llm_gym.tasks.review import ReviewTaskConfig, generate_review_task
    from llm_gym.feedback.web import LabelServer

    task = generate_review_task(ReviewTaskConfig(n_pretrain=2000, n_heldout=10, n_prompts=50, n_eval_prompts=5,
                                                 n_demonstrations=50))
    queries = []
    for demo in task.demonstrations:  # a demonstration against a review of the corpus with the same opening
        other = next((t for t in task.pretrain_texts if t.startswith(demo.prompt + " ")), None)
        if other is not None and other[len(demo.prompt):] != demo.completion:
            queries.append(Query(demo.prompt, (demo.completion, other[len(demo.prompt):])))
    folder = Path(tempfile.mkdtemp())
    driver = start_chromium(1200, 640)
    try:
        with PreferenceStore(folder / "labels.sqlite") as store:
            queries.sort(key=lambda q: -min(len(c) for c in q.completions))  # the fullest first: it is shown
            store.add_queries(queries[:12])
            with LabelServer(store, labeller="alice").start() as server:
                driver.get(server.url)
                WebDriverWait(driver, 10).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "query")
                driver.save_screenshot(str(out))
    finally:
        driver.quit()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"saved {out}")


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/labelling_page.png"))
