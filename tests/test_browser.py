"""The web page in headless Chromium (Debian's chromium + chromedriver, driven by Selenium): classify, show errors."""

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="serving needs fastapi: pip install fastapi uvicorn httpx")
pytest.importorskip("uvicorn", reason="serving needs uvicorn: pip install fastapi uvicorn httpx")
httpx = pytest.importorskip("httpx", reason="the tests' HTTP client: pip install httpx")
pytest.importorskip("selenium", reason="browser tests need selenium: pip install selenium")

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(
        "browser tests need Debian's chromium and chromedriver (/usr/bin): "
        "apt-get install -y chromium chromium-driver (CI installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from bertsent.config import ServeSettings  # noqa: E402
from bertsent.serve import background_server, create_app  # noqa: E402

MAX_CHARS = 300
REVIEW = "A wonderful, moving film: the cast was brilliant and I loved the story."
TIMEOUT = 20
API_KEY = "page-test-key"
SET_VALUE = "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));"


@pytest.fixture(scope="module")
def server_url(trained_tiny_dir):
    with background_server(create_app(trained_tiny_dir, ServeSettings(max_chars=MAX_CHARS))) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url(trained_tiny_dir):
    with background_server(create_app(trained_tiny_dir, ServeSettings(api_key=API_KEY))) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    flags = "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-background-networking"
    flags += " --disable-component-update --disable-sync --no-first-run --window-size=900,900"
    for flag in [*flags.split(), f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(browser, url: str) -> None:
    browser.get(f"{url}/")
    # The page fetched /info: the model line names the backend.
    WebDriverWait(browser, TIMEOUT).until(lambda d: "pytorch" in d.find_element(By.ID, "model-info").text)


def classify(browser, text: str) -> None:
    """Put ``text`` in the textarea, click Classify and wait until the page has handled the answer."""
    done = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-done"))
    box = browser.find_element(By.ID, "review")
    box.clear()
    if len(text) < 200:
        box.send_keys(text)  # typed, as a person would
    else:  # long texts: set at once (typing is slow), then tell the page
        browser.execute_script(SET_VALUE, box, text)
    browser.find_element(By.ID, "classify").click()
    WebDriverWait(browser, TIMEOUT).until(
        lambda d: int(d.find_element(By.TAG_NAME, "body").get_attribute("data-done")) > done
    )


def test_page_shows_the_apis_label_score_and_bars(browser, server_url, tmp_path):
    open_page(browser, server_url)
    assert browser.title.startswith("bertsent")
    classify(browser, REVIEW)
    assert browser.find_element(By.ID, "result").is_displayed()
    assert not browser.find_element(By.ID, "error").is_displayed()

    api = httpx.post(f"{server_url}/predict", json={"inputs": REVIEW, "parameters": {"top_k": None}}, timeout=10)
    scores = api.json()[0]  # every label, best first
    label = browser.find_element(By.ID, "label")
    score = browser.find_element(By.ID, "score")
    assert label.text == scores[0]["label"]
    assert float(score.text) == pytest.approx(scores[0]["score"], abs=5e-5)  # shown with 4 decimals
    assert float(score.get_attribute("data-score")) == pytest.approx(scores[0]["score"], abs=1e-6)

    rows = browser.find_elements(By.CSS_SELECTOR, "#bars .bar-row")
    assert [r.get_attribute("data-label") for r in rows] == [s["label"] for s in scores]
    for row, s in zip(rows, scores, strict=True):
        assert float(row.find_element(By.CLASS_NAME, "bar-value").text) == pytest.approx(s["score"], abs=5e-5)
        track = row.find_element(By.CLASS_NAME, "bar-track").size["width"]
        fill = row.find_element(By.CLASS_NAME, "bar-fill").size["width"]
        assert fill / track == pytest.approx(s["score"], abs=0.02)  # bar length is the probability

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000


def test_page_shows_api_errors(browser, server_url):
    open_page(browser, server_url)
    classify(browser, "x" * (MAX_CHARS + 1))
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and not browser.find_element(By.ID, "result").is_displayed()
    assert error.text == f"Error 422: inputs[0] has {MAX_CHARS + 1} characters; the limit is {MAX_CHARS} (--max-chars)"
    assert "over" in browser.find_element(By.ID, "chars").get_attribute("class")  # the counter warned too

    classify(browser, "   ")  # nothing to classify: said on the page, no request
    assert error.text == "Type a review first."
    classify(browser, REVIEW)  # and it recovers
    assert browser.find_element(By.ID, "result").is_displayed() and not error.is_displayed()


def test_page_asks_for_the_api_key_and_sends_it(browser, keyed_url):
    browser.get(f"{keyed_url}/")
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_element(By.ID, "auth").is_displayed())
    assert browser.find_element(By.ID, "model-info").text == "This server needs an API key: enter it below."
    classify(browser, REVIEW)  # without the key: the API's 401, said on the page
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and error.text.startswith("Error 401: this server needs an API key")

    browser.find_element(By.ID, "api-key").send_keys(API_KEY + Keys.ENTER)
    WebDriverWait(browser, TIMEOUT).until(lambda d: "pytorch" in d.find_element(By.ID, "model-info").text)
    info = browser.find_element(By.ID, "model-info").text
    assert info.startswith("trained_tiny") and "/" not in info.split(" · ")[0]  # the folder's name, not its path
    classify(browser, REVIEW)
    assert browser.find_element(By.ID, "result").is_displayed() and not error.is_displayed()
    expected = httpx.post(
        f"{keyed_url}/predict", json={"inputs": REVIEW}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    ).json()[0]
    assert browser.find_element(By.ID, "label").text == expected["label"]


def rgb(css: str) -> tuple[int, ...]:
    """``rgb(1, 2, 3)`` / ``rgba(1, 2, 3, 1)`` -> ``(1, 2, 3)``."""
    return tuple(int(float(v)) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])


def test_page_explains_with_a_colour_blind_safe_scale_and_a_legend(browser, server_url):
    open_page(browser, server_url)
    # 😀 is outside the BMP (two UTF-16 units, one code point: the offsets count code points); over 200
    # characters, so classify() sets it at once (ChromeDriver cannot type it); beyond 32 tokens, truncated.
    review = "A wonderful 😀, moving film: the cast was brilliant — I loved the story. Awful ending, though. " * 2
    review += "The plot was dull and the music was superb."
    box = browser.find_element(By.ID, "explain")
    classify(browser, review)  # not asked: no highlighting
    assert not box.is_selected() and not browser.find_element(By.ID, "explanation").is_displayed()

    box.click()
    classify(browser, review)
    assert browser.find_element(By.ID, "explanation").is_displayed()
    api = httpx.post(f"{server_url}/predict", json={"inputs": review, "parameters": {"explain": True}}, timeout=30)
    expected = api.json()[0]
    highlighted = browser.find_element(By.ID, "highlighted")
    assert highlighted.get_attribute("textContent") == review  # the whole review, in its own characters
    spans = highlighted.find_elements(By.CSS_SELECTOR, ".word")
    assert [s.text for s in spans] == [w["word"] for w in expected["explanation"]]
    strong = 0
    for span, word in zip(spans, expected["explanation"], strict=True):
        assert float(span.get_attribute("data-score")) == pytest.approx(word["score"], abs=1e-6)
        red, green, blue = rgb(span.value_of_css_property("background-color"))
        if abs(word["score"]) >= 0.3:  # orange for the label, blue against it: never red against green
            strong += 1
            assert (red > blue) if word["score"] > 0 else (blue > red), (word, (red, green, blue))
        if abs(word["score"]) < 0.02:
            assert min(red, green, blue) >= 245  # about white at 0
    assert strong >= 1
    label = expected["label"]
    assert browser.find_element(By.ID, "legend-for").text == f"for {label}"
    assert browser.find_element(By.ID, "legend-against").text == f"against {label}"
    scale = browser.find_element(By.CSS_SELECTOR, ".legend-scale").value_of_css_property("background-image")
    assert "rgb(33, 102, 172)" in scale and "rgb(230, 97, 1)" in scale  # blue - white - orange

    box.click()  # off again: the next answer has no explanation
    classify(browser, review)
    assert not browser.find_element(By.ID, "explanation").is_displayed()
