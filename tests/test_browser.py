"""JupyterLab in a real browser: a paper notebook runs from the UI and its widget responds.

Headless Debian Chromium, driven through chromedriver, opens notebook 03 (the smoke preset) in JupyterLab, runs all
cells, then moves the interactive preference slider and checks that the widget's output changes. nbval cannot show
this: it runs the kernel without a front end, so a widget that fails to render in JupyterLab 4 still passes there.
`make browser` installs Chromium and ChromeDriver (`make test` calls it); the test skips only where apt is
unavailable. The screenshots land in ``build/browser/``.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "03_firm.ipynb"
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "build" / "browser"
RUN_ALL_TIMEOUT_S = 420


def _apt_usable() -> bool:
    return shutil.which("apt-get") is not None and (
        os.geteuid() == 0 or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0)


def _browser_or_skip():
    if CHROMEDRIVER.exists() and CHROMIUM.exists():
        return
    if not _apt_usable():
        pytest.skip("Debian chromium/chromium-driver are not installed and apt is unavailable here")
    pytest.fail("chromium/chromium-driver are missing but apt is available: run `make browser` (make test does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of the notebook (so the UI's autosave never touches the repo's copy)."""
    _browser_or_skip()
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, work / NOTEBOOK)
    port, token = _free_port(), "fedalign-browser-test"
    env = {**os.environ, "FEDALIGN_PRESET": "smoke", "FEDALIGN_FIGURES_DIR": str(work / "figures"),
           "JUPYTER_RUNTIME_DIR": str(work / "runtime"), "JUPYTER_CONFIG_DIR": str(work / "config")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--expose-app-in-browser",
         "--allow-root", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("JupyterLab did not start:\n" + (work / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    yield f"{url}/lab/tree/{NOTEBOOK}?token={token}", work
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    _browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


# Runs every cell through JupyterLab's own command, as the Run menu does, once the kernel is ready; resolves with
# the notebook's JSON as the front end holds it (outputs included).
RUN_ALL_JS = """
const done = arguments[arguments.length - 1];
const app = window.jupyterapp;
const panel = app.shell.currentWidget;
panel.sessionContext.ready
  .then(() => app.commands.execute('notebook:run-all-cells'))
  .then(ok => done({ok: ok, notebook: panel.content.model.toJSON()}),
        err => done({ok: false, error: String(err)}));
"""


def _wait_for(driver, script, timeout_s, what, *args):
    deadline = time.monotonic() + timeout_s
    while not driver.execute_script(script, *args):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


def test_notebook_runs_and_widget_responds_in_jupyterlab(lab, browser):
    url, work = lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(url)
    _wait_for(browser, "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                       "return !!(w && w.sessionContext && w.content && w.content.model);", 120, "the notebook to open")

    browser.set_script_timeout(RUN_ALL_TIMEOUT_S)
    result = browser.execute_async_script(RUN_ALL_JS)
    assert result.get("ok"), f"run-all failed: {result.get('error')}"
    cells = [c for c in result["notebook"]["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in cells), "some code cells did not run"
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"error outputs: {[(e['ename'], e['evalue']) for e in errors]}"

    _wait_for(browser, "return document.querySelectorAll('.widget-interact .widget-output').length > 0", 60,
              "the interactive widget to render")
    browser.execute_script("document.querySelector('.widget-interact').scrollIntoView({block: 'center'})")
    time.sleep(1)
    browser.save_screenshot(str(SCREENSHOTS / "03_firm_before.png"))
    page_text = browser.find_element(By.TAG_NAME, "body").text
    assert "Error displaying widget" not in page_text

    # innerHTML, not the text: the output is a figure (an <img> whose data changes) and printed samples
    output_js = "return document.querySelector('.widget-interact .widget-output').innerHTML"
    before = browser.execute_script(output_js)
    assert "<img" in before, "the widget shows no figure before the slider moves"
    handle = browser.find_element(By.CSS_SELECTOR, ".widget-interact .widget-slider .noUi-handle")
    readout = browser.find_element(By.CSS_SELECTOR, ".widget-interact .widget-slider .widget-readout")
    readout_before = readout.text
    handle.click()
    handle.send_keys(Keys.ARROW_RIGHT)   # one step of the first slider (the preference p)
    _wait_for(browser, "return document.querySelector('.widget-interact .widget-slider .widget-readout')"
                       ".innerText !== arguments[0]", 30, "the slider to move", readout_before)
    _wait_for(browser, "const t = document.querySelector('.widget-interact .widget-output').innerHTML;"
                       "return t.includes('<img') && t !== arguments[0];", 60, "the widget's output to change", before)
    time.sleep(1)
    browser.save_screenshot(str(SCREENSHOTS / "03_firm_after.png"))
    assert "Error displaying widget" not in browser.find_element(By.TAG_NAME, "body").text
