"""The page itself, in a real browser: headless Chromium (Debian's chromium and chromium-driver, which `make
test` installs) drives prompt -> generate -> vary -> upscale -> history against a server on this machine."""

import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ready  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from latentlab.server.app import create_app  # noqa: E402
from latentlab.server.library import Library  # noqa: E402
from latentlab.server.studio import Studio  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                 "(make test installs them)")]


@pytest.fixture
def server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    library = Library(tmp_path / "models", tmp_path / "outputs")
    config = uvicorn.Config(create_app(library, Studio(library, "cpu")), host="127.0.0.1", port=port,
                            log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    while not running.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def results(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#result .card img")


def wait_for_new_result(driver, old_src, timeout=120):
    def changed(d):
        images = results(d)
        return images and images[0].get_attribute("src") != old_src and d.find_element(By.ID, "status").text == "done"
    WebDriverWait(driver, timeout).until(changed)
    return results(driver)


def test_prompt_generate_vary_upscale_history(server, browser):
    browser.get(server)
    WebDriverWait(browser, 30).until(ready.presence_of_element_located((By.CSS_SELECTOR, "#model option")))
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("a large red circle on the left")
    for field, value in (("steps", "5"), ("count", "4"), ("seed", "0")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    grid = wait_for_new_result(browser, None)
    assert len(grid) == 4
    # V on image 1: four variations
    browser.find_elements(By.CSS_SELECTOR, "#result .card button[data-act=vary]")[1].click()
    varied = wait_for_new_result(browser, grid[0].get_attribute("src"))
    assert len(varied) == 4
    # U on the first variation: one image at twice the size
    browser.find_elements(By.CSS_SELECTOR, "#result .card button[data-act=upscale]")[0].click()
    upscaled = wait_for_new_result(browser, varied[0].get_attribute("src"))
    assert len(upscaled) == 1
    assert browser.execute_script("return arguments[0].naturalWidth", upscaled[0]) == 64
    # the history lists all three grids, newest first, each with its images
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history .entry")) == 3)
    entries = browser.find_elements(By.CSS_SELECTOR, "#history .entry")
    assert "(upscale)" in entries[0].text and "(vary)" in entries[1].text
    assert [len(e.find_elements(By.TAG_NAME, "img")) for e in entries] == [1, 4, 4]
    assert browser.find_element(By.ID, "error").get_attribute("hidden")
    shot = os.environ.get("LATENTLAB_SCREENSHOT")
    if shot:
        browser.save_screenshot(str(Path(shot)))
    # a history image sets the form as it was drawn, and Generate draws it again
    first = entries[2].find_elements(By.TAG_NAME, "img")[2]
    drawn = read(first.get_attribute("src"))
    first.click()
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "2"
    browser.find_element(By.ID, "generate").click()
    again = wait_for_new_result(browser, results(browser)[0].get_attribute("src"))
    assert len(again) == 1 and read(again[0].get_attribute("src")) == drawn


def read(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def test_a_bad_request_shows_its_line_on_the_page(server, browser):
    browser.get(server)
    WebDriverWait(browser, 30).until(ready.presence_of_element_located((By.CSS_SELECTOR, "#model option")))
    steps = browser.find_element(By.ID, "steps")
    browser.execute_script("arguments[0].removeAttribute('min')", steps)
    steps.clear()
    steps.send_keys("0")
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "steps is '0'" in browser.find_element(By.ID, "error").text
