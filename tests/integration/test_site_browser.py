"""The site in headless Chromium (Debian's chromium + chromedriver, driven by selenium), from
file:// as a reader opens it: no console errors, every table present, sorting and the
filter work, and an entry page's curve and adversarial examples load."""

from __future__ import annotations

import shutil
import textwrap

import pytest

from robustad_bench.harness.cli import main

SUITE = """\
name: site
map_size: 32
batch_size: 8
datasets: [{name: textures, categories: [brick, grass], image_size: 48, crop_size: 64, n_train: 6, n_test_normal: 3, n_test_anomalous: 3}]
detectors: [{name: patchcore, backbone: resnet18, weights: random, input_size: 48}]
attacks:
  - {name: none}
  - {name: fgsm, eps: [2/255, 8/255]}
  - {name: pgd, eps: 8/255, steps: 3, objective: [detection, localization]}
"""


def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt-get)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--allow-file-access-from-files",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def loaded(driver, selector: str) -> list[bool]:
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll({selector!r})).map(i => i.complete && i.naturalWidth > 0)")


def test_the_site_works_in_a_browser(tmp_path):
    suite = tmp_path / "site.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    driver = browser()
    try:
        driver.get((out / "site" / "index.html").as_uri())
        assert severe(driver) == []
        for selector in ("table.main", "table.summary", "table.detail"):
            assert driver.find_elements("css selector", selector), selector
        assert "Ranked by robust AUROC" in driver.page_source
        detail = driver.find_element("css selector", "table.detail")
        column = driver.execute_script(
            "return Array.from(arguments[0].tHead.rows[0].cells).findIndex(c => c.textContent.startsWith('Attack'))", detail)

        def attacks():
            return [r.find_elements("tag name", "td")[column].text for r in detail.find_elements("css selector", "tbody tr")]

        before = attacks()
        detail.find_elements("css selector", "thead th")[column].click()
        after = attacks()
        assert sorted(after, key=str.lower, reverse=True) == after and after != before  # first click: descending
        search = driver.find_element("css selector", "input.filter[data-target='table.detail']")
        search.send_keys("grass")
        shown = [r for r in detail.find_elements("css selector", "tbody tr") if r.is_displayed()]
        assert 0 < len(shown) < len(before) and all("grass" in r.text for r in shown)
        driver.save_screenshot(str(tmp_path / "index.png"))
        driver.find_element("link text", "patchcore").click()
        assert "Provenance" in driver.page_source and severe(driver) == []
        assert loaded(driver, "img.curve") == [True]
        examples = loaded(driver, "table.examples img")
        assert len(examples) >= 2 * 5 and all(examples)  # two categories × at least one example × five pictures
        driver.save_screenshot(str(tmp_path / "entry.png"))
    finally:
        driver.quit()
    assert (tmp_path / "index.png").stat().st_size > 0
