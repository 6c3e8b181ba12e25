"""`vaelab explore`: the page's decoder against PyTorch's, and the page clicked and dragged in a real browser.

The browser is Debian's chromium, driven headless by Selenium through Debian's
chromium-driver (`make test` installs both where it can); without them the
browser tests are skipped and say why. The page's own decode time is a
benchmark's business (benchmarks/explore_decode.py), not a test's.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.data import evaluation_split
from vaelab.explore import explorer_data
from vaelab.run import load_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'vaelab[test]')"
    if CHROMIUM is None or DRIVER is None:
        return "Debian's chromium and chromium-driver are not installed (make test installs them as root)"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1250"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _train(tmp_path, name, *flags, shape=("--z-dim", "3", "--hidden", "16")):
    run = tmp_path / name
    args = ["--dataset", "digits", *shape, "--epochs", "1", "--device", "cpu"]
    assert main(["train", *args, *flags, "--no-progress", "--no-plots", "--out", str(run)]) == 0
    return run


def _open(browser, run, points=60):
    assert main(["explore", str(run), "--points", str(points)]) == 0
    browser.get((run / "explore.html").as_uri())
    return browser


def _torch_images(run, z, y=None):
    model = load_run(run).model
    with torch.no_grad():
        z = torch.tensor(z, dtype=torch.float32)
        y = None if y is None else torch.tensor(y)
        return torch.sigmoid(model.decode(z, y)).numpy()


def _page_images(browser, z, y=None):
    ys = y if y is not None else [0] * len(z)
    return np.array(
        browser.execute_script("return arguments[0].map((z, i) => vaelab.decode(z, arguments[1][i]))", z, ys)
    )


def test_the_page_is_one_offline_file_refusing_what_it_cannot_run(tmp_path, capsys):
    run = _train(tmp_path, "vae")
    assert main(["explore", str(run), "--points", "30"]) == 0
    page = (run / "explore.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    data = explorer_data(load_run(run), 30)
    assert (
        len(data["labels"]) == 30 and data["sliders"] and data["map_kind"].startswith("first two principal")
    )
    two = _train(tmp_path, "two", "--model", "two-layer-vae", shape=("--z1-dim", "3", "--z2-dim", "2"))
    assert main(["explore", str(two)]) == 1
    assert "one Gaussian latent and a decoder" in capsys.readouterr().err
    assert main(["explore", str(run), "--points", "1"]) == 1
    assert "--points must be at least 2" in capsys.readouterr().err


@needs_browser
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_the_page_decodes_what_pytorch_decodes(tmp_path, browser, net):
    run = _train(tmp_path, net, "--net", net, "--activation", "softplus")
    _open(browser, run)
    z = np.random.default_rng(0).normal(size=(12, 3)).round(3).tolist()
    difference = np.abs(_page_images(browser, z) - _torch_images(run, z)).max()
    assert difference < 1e-4


@needs_browser
def test_the_conditional_page_decodes_each_label_and_the_picker_feeds_the_decoder(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run = _train(tmp_path, "cvae", "--model", "cvae")
    _open(browser, run)
    z = np.random.default_rng(1).normal(size=(10, 3)).tolist()
    labels = list(range(10))
    assert np.abs(_page_images(browser, z, labels) - _torch_images(run, z, labels)).max() < 1e-4
    Select(browser.find_element(By.ID, "label")).select_by_value("7")
    state = browser.execute_script(
        "return {z: Array.from(vaelab.state.z), y: vaelab.state.y, last: Array.from(vaelab.state.last)}"
    )
    assert state["y"] == 7
    assert np.abs(np.array(state["last"]) - _torch_images(run, [state["z"]], [7])[0]).max() < 1e-4


@needs_browser
def test_clicking_hovering_dragging_and_interpolating(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    run = _train(tmp_path, "vae")
    _open(browser, run)
    canvas = browser.find_element(By.ID, "map")
    half = canvas.size["width"] / 2, canvas.size["height"] / 2

    def at(n):  # an offset from the map's centre to point n
        x, y = browser.execute_script("return vaelab.place(arguments[0])", n)
        return x - half[0], y - half[1]

    # hovering a point shows its image; clicking sets the latent to its posterior mean
    ActionChains(browser).move_to_element_with_offset(canvas, *at(4)).perform()
    hover = browser.find_element(By.ID, "hover")
    shown = int(hover.get_attribute("data-index"))
    assert hover.is_displayed()
    ActionChains(browser).click().perform()
    z = browser.execute_script("return Array.from(vaelab.state.z)")
    images = evaluation_split("digits", "test")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:60]
    model = load_run(run).model
    with torch.no_grad():
        mean = model.encode(images.batch(pick[shown : shown + 1]))[0][0].numpy()
    assert np.abs(np.array(z) - mean).max() < 1e-6
    browser.find_element(By.ID, "set-a").click()

    # dragging a slider moves its latent dimension and redraws the image
    slider = browser.find_element(By.CSS_SELECTOR, "#sliders input")
    dim = int(slider.get_attribute("data-dim"))
    before = browser.execute_script("return Array.from(vaelab.state.last)")
    ActionChains(browser).drag_and_drop_by_offset(slider, slider.size["width"] // 3, 0).perform()
    after = browser.execute_script(
        "return {z: Array.from(vaelab.state.z), last: Array.from(vaelab.state.last)}"
    )
    assert after["z"][dim] > z[dim] + 0.5 and after["z"][:dim] == z[:dim]
    assert np.abs(np.array(after["last"]) - np.array(before)).max() > 1e-3
    assert np.abs(np.array(after["last"]) - _torch_images(run, [after["z"]])[0]).max() < 1e-4
    timing = browser.find_element(By.ID, "timing")
    assert timing.text.startswith("decode: ") and float(timing.get_attribute("data-median")) >= 0

    # the strip runs from A to B in ten steps
    browser.find_element(By.ID, "set-b").click()
    strip = np.array(browser.execute_script("return vaelab.state.strip"))
    assert strip.shape == (10, 64)
    ends = _torch_images(run, [z, after["z"]])
    assert np.abs(strip[0] - ends[0]).max() < 1e-4 and np.abs(strip[-1] - ends[1]).max() < 1e-4


def test_the_report_links_the_explorer_once_it_exists(tmp_path):
    run = tmp_path / "run"
    args = ["--dataset", "digits", "--z-dim", "2", "--hidden", "8", "--epochs", "1", "--device", "cpu"]
    assert main(["train", *args, "--no-progress", "--out", str(run), "--no-plots"]) == 0
    assert main(["report", str(run)]) == 0
    assert "explore.html" not in (run / "report.html").read_text()
    assert main(["explore", str(run), "--points", "20"]) == 0
    assert 'href="explore.html"' in (run / "report.html").read_text()
    data = json.loads(
        (run / "explore.html").read_text().split('type="application/json">')[1].split("</script>")[0]
    )
    assert data["map_kind"] == "the latent itself (z₁, z₂)" and data["z_dim"] == 2
