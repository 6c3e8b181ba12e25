"""How fast the latent explorer's page decodes, measured in a real browser, beside PyTorch.

    python benchmarks/explore_decode.py [--run RUN] [--decodes 300] [--shot FILE.png]

Without --run, trains the `pyro-tutorial` network (784-400-50, softplus) for
one epoch on MNIST into a temporary folder: the issue's yardstick is that
network's decode, "well under 16 ms". Opens RUN/explore.html in headless
chromium, moves the first slider `--decodes` times through the page's own
input events (each move decodes and redraws, timed by the page with
performance.now()), and reads back the page's printed median; then times
PyTorch's decode of one latent in this process, one thread, as the baseline
ratio. Writes a screenshot (default benchmarks/results/explore-<run>.png)
and prints a JSON record.
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1150"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def torch_decode_ms(run_dir, repeats: int) -> float:
    from vaelab.models.cvae import CVAE
    from vaelab.run import load_run

    model = load_run(run_dir).model
    z = torch.randn(1, model.z_dim)
    y = torch.zeros(1, dtype=torch.long) if isinstance(model, CVAE) else None  # the explorer's test
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            torch.sigmoid(model.decode(z, y))
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory (default: pyro-tutorial, 1 epoch, trained here)")
    parser.add_argument("--decodes", type=int, default=300, help="slider moves (default 300)")
    parser.add_argument("--points", type=int, default=1000, help="test images on the map")
    parser.add_argument("--shot", help="screenshot file (default benchmarks/results/explore-<run>.png)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from vaelab.cli import main as vaelab

    temporary = None
    run = args.run
    command = [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    if run is None:
        temporary = tempfile.mkdtemp()
        run = str(Path(temporary) / "pyro-tutorial")
        flags = "--preset pyro-tutorial --epochs 1 --device cpu --no-progress --no-plots".split()
        assert vaelab(["train", *flags, "--out", run]) == 0
    assert vaelab(["explore", run, "--points", str(args.points)]) == 0
    driver = _browser()
    try:
        driver.get((Path(run) / "explore.html").resolve().as_uri())
        page = driver.execute_script(
            """
            const input = document.querySelector('#sliders input'), n = arguments[0];
            vaelab.state.times.length = 0;
            const own = [];
            for (let i = 0; i < n; i++) {
              input.value = -3 + 6 * (i % 100) / 99;
              input.dispatchEvent(new Event('input'));
              own.push(vaelab.state.times[vaelab.state.times.length - 1]);
            }
            const printed = +document.getElementById('timing').dataset.median;
            return {times: own, printed: printed, text: document.getElementById('timing').textContent};
            """,
            args.decodes,
        )
        # a point clicked, A and B set, so the screenshot shows the strip too
        driver.execute_script("vaelab.choose(3); document.getElementById('set-a').click();")
        driver.execute_script("vaelab.choose(11); document.getElementById('set-b').click();")
        shot = Path(args.shot or HERE / "results" / f"explore-{Path(run).name}.png")
        driver.save_screenshot(str(shot))
        browser_version = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()
    times = sorted(page["times"])
    torch_ms = torch_decode_ms(run, 300)
    page_median = statistics.median(times)
    record = {
        "benchmark": "explore_decode",
        "date": date.today().isoformat(),
        "command": " ".join(["python", *command]),
        "run": run if temporary is None else "pyro-tutorial, 1 epoch (temporary)",
        "browser": f"chromium {browser_version}, headless",
        "decodes": len(times),
        "page_median_ms": page_median,
        "page_p90_ms": times[int(0.9 * (len(times) - 1))],
        "page_max_ms": times[-1],
        "page_printed_median_ms": page["printed"],
        "page_text": page["text"],
        "torch_median_ms": torch_ms,
        "page_over_torch": page_median / torch_ms,
        "screenshot": str(shot),
    }
    print(json.dumps(record, indent=1))
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    return record


if __name__ == "__main__":
    main()
