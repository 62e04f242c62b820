"""The draw page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium with the system chromedriver, nothing downloaded) draws a 7 with pointer events and must
show a digit and ten bars, with no errors in the console, and no broken image before the first
answer or after Clear; a photo chosen while a drawing's request is out must end up shown. Skips
without Chromium, except under CI.

SCREENSHOT=docs/draw.png python -m pytest tests/test_draw_browser.py also writes the picture
the README shows.
"""
import os
import shutil
import tempfile

import pytest

import draw

from test_draw import Held, png, serve

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.slow  # a real browser, started for these tests


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        selenium_missing = "selenium is not installed (pip install -r requirements-dev.txt)"
    else:
        selenium_missing = None
    missing = selenium_missing or (None if CHROMIUM and CHROMEDRIVER else
                                   "no Chromium here (apt-get install chromium chromium-driver)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {missing}")
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=920,700", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def draw_seven(browser, pad):
    """A 7 with pointer events: a bar along the top, then down to the left (offsets from the canvas's centre)."""
    from selenium.webdriver.common.action_chains import ActionChains

    strokes = ActionChains(browser).move_to_element_with_offset(pad, -70, -90).click_and_hold()
    for dx, dy in ((-30, -90), (10, -90), (50, -90), (70, -90), (50, -30), (30, 30), (10, 90)):
        strokes.move_to_element_with_offset(pad, dx, dy)
    strokes.release().perform()


def test_no_broken_image_before_the_first_answer_nor_after_clear(browser, trained):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out, _ = trained
    with serve(out / "model.pt") as (port, _):
        browser.get(f"http://127.0.0.1:{port}/")
        seen = browser.find_element(By.ID, "seen")
        assert not seen.is_displayed()  # an <img> without src shows the broken-image icon
        box = browser.find_element(By.CSS_SELECTOR, ".screen")
        assert box.is_displayed() and box.size["height"] >= 168  # a black square where the image will be
        draw_seven(browser, browser.find_element(By.ID, "pad"))
        WebDriverWait(browser, 20).until(lambda b: seen.is_displayed())
        assert seen.get_attribute("src").startswith("data:image/png;base64,")
        browser.find_element(By.ID, "clear").click()
        assert not seen.is_displayed() and browser.find_element(By.ID, "digit").text == "?"
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_drawing_a_digit_shows_the_answer_and_ten_bars(browser, real_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out, _ = real_run
    with serve(out / "model.pt") as (port, _):
        browser.get(f"http://127.0.0.1:{port}/")
        pad = browser.find_element(By.ID, "pad")
        assert browser.find_element(By.ID, "digit").text == "?"
        draw_seven(browser, pad)
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "digit").text != "?")
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "seen").get_attribute("src"))
        assert browser.find_element(By.ID, "digit").text == "7"
        percents = [float(e.text.rstrip("%")) for e in browser.find_elements(By.CSS_SELECTOR, "#bars .pct")]
        assert len(percents) == 10 and abs(sum(percents) - 100) < 1 and max(percents) == percents[7]
        widths = [e.size["width"] for e in browser.find_elements(By.CSS_SELECTOR, "#bars .bar")]
        assert widths.index(max(widths)) == 7 and max(widths) > 0
        # why: the evidence map beside it, red toward 7 and blue toward the runner-up, named in one line
        second = sorted(range(10), key=lambda d: -percents[d])[1]
        assert browser.find_element(By.ID, "why-legend").text == f"red pushed toward 7, blue toward {second}"
        drawn = browser.execute_script("return Array.from(document.getElementById('why').getContext('2d')"
                                       ".getImageData(0, 0, 28, 28).data)")
        pixels = [drawn[i:i + 4] for i in range(0, len(drawn), 4)]
        red = sum(1 for r, g, b, _ in pixels if r == 255 and g == b < 255)
        blue = sum(1 for r, g, b, _ in pixels if b == 255 and r == g < 255)
        assert red > 20 and blue > 0 and sum(1 for p in pixels if p[:3] == [255, 0, 0]) >= 1  # full red: the most
        browser.save_screenshot(str(tmp_path / "draw.png"))
        if os.environ.get("SCREENSHOT"):
            browser.save_screenshot(os.environ["SCREENSHOT"])
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        browser.find_element(By.ID, "clear").click()
        assert browser.find_element(By.ID, "digit").text == "?"
        assert browser.find_element(By.ID, "why-legend").text == "why this answer"


def test_a_photo_chosen_while_a_drawing_is_read_is_the_answer_shown(browser, trained, monkeypatch, tmp_path):
    """The drawing's request is held in the server until the photo has been chosen; then both are
    answered, the drawing's first: the page must end showing the photo's answer, the newest input."""
    from PIL import Image, ImageDraw
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = Image.new("L", (300, 300), "white")  # a thick 1: what the small model makes of it does not matter,
    ImageDraw.Draw(photo).line([(150, 40), (150, 260)], fill="black", width=40)  # only that it is the photo's
    (tmp_path / "photo.png").write_bytes(png(photo))
    out, _ = trained
    with serve(out / "model.pt") as (port, _), Held(monkeypatch) as held:
        answers = {}  # what the server answered for each image, by its size
        real = draw.predict

        def recorded(model, device, body):
            answer = real(model, device, body)
            answers[len(body)] = answer
            return answer

        monkeypatch.setattr(draw, "predict", recorded)
        browser.get(f"http://127.0.0.1:{port}/")
        draw_seven(browser, browser.find_element(By.ID, "pad"))
        held.started()  # the drawing is being read
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "photo.png"))
        held.release()
        WebDriverWait(browser, 30).until(lambda b: len(held.bodies) == 2 and len(answers) == 2)
        status, shown = answers[len(held.bodies[1])]
        assert held.bodies[1] == png(photo) and status == 200
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "seen").get_attribute("src") == shown["image"])
        assert browser.find_element(By.ID, "digit").text == str(shown["digit"])
        assert browser.find_element(By.ID, "why-legend").text.endswith(f"blue toward {shown['runner_up']}")
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def choose_and_wait_for_the_status(browser, path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "status").text not in ("", "Draw a digit."))
    return browser.find_element(By.ID, "status")


def test_a_photo_over_4_mb_is_the_size_message_not_no_answer(browser, trained, tmp_path):
    """The page knows the server's limit: a photo over it is not sent, and the message says why."""
    (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(draw.MAX_BODY + 1000))
    with serve(trained[0] / "model.pt") as (port, _):
        from selenium.webdriver.common.by import By

        browser.get(f"http://127.0.0.1:{port}/")
        status = choose_and_wait_for_the_status(browser, tmp_path / "big.png")
        assert status.text.startswith("This image is more than 4 MB") and status.get_attribute("class") == "error"
        assert browser.find_element(By.ID, "digit").text == "?"


@pytest.mark.parametrize("setting, expected", [("max_request_body_size", "This image is more than 4 MB"),
                                               ("max_request_header_size", "The browser sent more than 64 KB")])
def test_the_servers_own_plain_text_refusals_are_shown_as_what_they_mean(browser, trained, tmp_path, monkeypatch,
                                                                         setting, expected):
    """waitress answers 413 and 431 itself, in plain text (here made to, with a limit of 2 KB): the
    page shows what they mean, not "No answer from the server"."""
    monkeypatch.setitem(draw.SETTINGS, setting, 2048)
    photo = b"\x89PNG\r\n\x1a\n" + os.urandom(3000) if setting == "max_request_body_size" else png_of_a_one()
    (tmp_path / "photo.png").write_bytes(photo)
    with serve(trained[0] / "model.pt") as (port, _):
        browser.get(f"http://127.0.0.1:{port}/")
        if setting == "max_request_header_size":  # the page is fetched before the cookie makes its headers too large
            browser.execute_script("document.cookie = 'big=' + 'x'.repeat(3000)")
        status = choose_and_wait_for_the_status(browser, tmp_path / "photo.png")
        assert status.text.startswith(expected) and status.get_attribute("class") == "error", status.text
        assert "No answer" not in status.text
        browser.delete_all_cookies()


def png_of_a_one():
    from PIL import Image, ImageDraw

    image = Image.new("L", (64, 64), "white")
    ImageDraw.Draw(image).line([(32, 8), (32, 56)], fill="black", width=6)
    return png(image)
