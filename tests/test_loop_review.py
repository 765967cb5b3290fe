"""`sap review`: signals on hand-made masks, the ranking, worst.json, and the page in a real Chromium."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from pseudolabel.core.bags import Bag
from pseudolabel.core.coco import load_coco_json, lock_annotation
from pseudolabel.core.rle import encode_mask, segmentation_to_rle
from pseudolabel.review import Context, build_queue, combine, share_of_bad_in_top
from pseudolabel.review.page import write_page
from pseudolabel.review.signals import annotation_signals, shape_signals

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "coco_cc_by"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def _box(h, w, y1, y2, x1, x2):
    m = np.zeros((h, w), np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def test_shape_signals_on_hand_made_masks():
    m = _box(64, 64, 10, 50, 10, 50)
    s = shape_signals(m, (20.5, 20.5))
    assert s == {"tiny": 0.0, "fragmented": 0.0, "point_outside": 0.0}
    m2 = m.copy()
    m2[55:59, 55:59] = 1                                  # a 16-px fragment beside 1600 px
    s2 = shape_signals(m2, (5.0, 5.0))
    assert s2["fragmented"] == pytest.approx(16 / 1616) and s2["point_outside"] == 1.0
    assert shape_signals(_box(64, 64, 0, 4, 0, 4), None)["tiny"] == pytest.approx(1 - 4 / 32)
    assert "point_outside" not in shape_signals(m, None)


def test_combine_is_a_weighted_noisy_or():
    assert combine({}) == 0.0
    assert combine({"tiny": 0.0, "margin": 0.0}) == 0.0
    one = combine({"point_outside": 1.0})
    assert one > 0.99 and combine({"tiny": 0.5}) < combine({"tiny": 0.5, "fragmented": 0.2}) < one
    assert combine({"margin": 0.5}) > combine({"tiny": 0.5})  # margin weighs 2, tiny 1


def test_signals_read_every_stage_and_degrade_gracefully():
    h = w = 32
    chosen, other = _box(h, w, 4, 20, 4, 20), _box(h, w, 4, 28, 4, 28)
    bag = Bag(ann_id=7, image_id=1, category_id=3, point=(8.0, 8.0), boxes=np.zeros((2, 4)),
              rles=[encode_mask(chosen), encode_mask(other)], scores=[0.9, 0.8], kinds=["point", "point"],
              ranks=[0, 1], stability=[0.95, 0.7])
    ann = {"id": 7, "image_id": 1, "category_id": 3, "point": [8.0, 8.0], "segmentation": encode_mask(chosen),
           "refine_iou": 0.8, "sap": {"method": "sapnet", "proposal_index": 0, "order": [0, 1], "margin": 0.25,
                                      "refine_iters": 2, "refine_max_iters": 4}}
    ctx = Context(selected={7: {**ann, "segmentation": encode_mask(other)}},
                  sam_top1={7: {"segmentation": encode_mask(other)}}, bags={7: bag},
                  predictions={1: [{"category_id": 3, "segmentation": encode_mask(chosen)}]})
    s, runner = annotation_signals(ann, h, w, ctx)
    assert s["sam_iou"] == pytest.approx(0.1) and s["stability"] == pytest.approx(0.05)
    assert s["margin"] == 0.75 and s["refine_iou"] == pytest.approx(0.2) and s["refine_iters"] == 0.5
    iou = 256 / 576
    assert s["refine_change"] == pytest.approx(1 - iou, abs=1e-4) and s["stage_disagree"] == 0.0
    assert s["model_disagree"] == 0.0 and segmentation_to_rle(runner, h, w) == encode_mask(other)
    bare = {k: v for k, v in ann.items() if k not in ("refine_iou", "sap")}  # no margin, no provenance
    s2, runner2 = annotation_signals(bare, h, w, Context())
    assert set(s2) == {"tiny", "fragmented", "point_outside"} and runner2 is None
    assert annotation_signals(lock_annotation(ann, "labelstudio"), h, w, ctx) == ({}, None)


def test_queue_puts_the_worst_first_the_done_last_and_measures_itself():
    h = w = 64
    imgs = [{"id": 1, "file_name": "a.jpg", "width": w, "height": h}]
    good, bad = _box(h, w, 10, 50, 10, 50), _box(h, w, 10, 12, 10, 12)
    anns = [{"id": i, "image_id": 1, "category_id": 1, "point": [20.0, 20.0],
             "segmentation": encode_mask(bad if i in (2, 5) else good)} for i in range(1, 9)]
    anns[0] = lock_annotation(anns[0], "cvat")
    labels = {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    gt = {"images": imgs, "annotations": [{"id": i, "image_id": 1, "segmentation": encode_mask(good)} for i in range(1, 9)],
          "categories": labels["categories"]}
    items, _ = build_queue(labels, Context(), gt)
    assert [it["id"] for it in items[:2]] == [2, 5] and items[-1]["id"] == 1 and items[-1]["done"]
    assert [it["rank"] for it in items] == list(range(1, 9)) and items[0]["top"] == "point_outside"
    m = share_of_bad_in_top(items, top=0.3)
    assert m["bad"] == 2 and m["queue"] == 1.0 and 0.1 < m["random"] < 0.6


@pytest.fixture(scope="module")
def review_dir(tmp_path_factory) -> Path:
    """`sap review` of the CC-BY photos' masks as if they were pseudo-labels, one of them locked."""
    tmp = tmp_path_factory.mktemp("review")
    coco = load_coco_json(DATA / "annotations.json")
    coco["annotations"][3] = lock_annotation(coco["annotations"][3], "labelstudio")
    (tmp / "labels.json").write_text(json.dumps(coco))
    from pseudolabel.review import run_review

    run_review(tmp / "page", ann=tmp / "labels.json", images=DATA / "images")
    return tmp


def test_review_command_writes_page_queue_and_worst(review_dir, monkeypatch, capsys):
    out = review_dir / "out"
    code = run_cli(["review", "--ann", str(review_dir / "labels.json"), "--images", str(DATA / "images"),
                    "--gt", str(DATA / "annotations.json"), "--out", str(out), "--n", "5"], monkeypatch)
    assert code == 0
    text = capsys.readouterr().out
    assert "review queue of 36 annotations (1 done)" in text and "against the truth" not in text  # all IoU 1
    queue = json.loads((out / "queue.json").read_text())["items"]
    assert len(queue) == 36 and queue[-1]["done"] and all((out / it["thumb"]).is_file() for it in queue)
    worst = load_coco_json(out / "worst.json")
    assert [a["id"] for a in worst["annotations"]] == [it["id"] for it in queue[:5]]
    assert all("risk" in a["sap"]["review"] for a in worst["annotations"])
    assert (out / "index.html").is_file() and (out / "review.config.yaml").is_file()
    assert run_cli(["review", "--out", str(out)], monkeypatch) == 2


def _driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'sap[dev]')")
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("no Chromium: install the Debian packages chromium and chromium-driver (.ci/run does)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900",
                 "--allow-file-access-from-files"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _wait_ready(driver, timeout=60.0):
    t0 = time.perf_counter()
    while driver.execute_script("return document.body && document.body.getAttribute('data-ready')") != "1":
        assert time.perf_counter() - t0 < timeout, "the page never finished rendering"
        time.sleep(0.05)
    return time.perf_counter() - t0


def test_page_in_headless_chromium_renders_filters_and_links(review_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out = review_dir / "page"
    driver = _driver(tmp_path)
    try:
        driver.get((out / "index.html").as_uri())
        _wait_ready(driver)
        items = driver.find_elements(By.CSS_SELECTOR, "div.item[data-ann-id]")
        assert len(items) == 36 and driver.find_element(By.ID, "count").text == "36"
        assert driver.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
                                     " || document.images.length < 36") is True
        href = items[0].find_element(By.TAG_NAME, "a").get_attribute("href")
        assert href.startswith("file://") and Path(href.removeprefix("file://")).is_file()
        Select(driver.find_element(By.ID, "f-class")).select_by_value("person")
        n_person = sum(1 for a in load_coco_json(DATA / "annotations.json")["annotations"] if a["category_id"] == 1)
        assert len(driver.find_elements(By.CSS_SELECTOR, "div.item[data-ann-id]")) == n_person
        assert driver.find_element(By.ID, "count").text == str(n_person)
        Select(driver.find_element(By.ID, "f-class")).select_by_value("")
        Select(driver.find_element(By.ID, "f-status")).select_by_value("done")
        done = driver.find_elements(By.CSS_SELECTOR, "div.item[data-ann-id]")
        assert len(done) == 1 and "done" in done[0].get_attribute("class")
        Select(driver.find_element(By.ID, "f-status")).select_by_value("")
        Select(driver.find_element(By.ID, "f-signal")).select_by_value("fragmented")
        driver.execute_script("var e = document.getElementById('f-min'); e.value = '0.05';"
                              "e.dispatchEvent(new Event('change'));")
        queue = json.loads((out / "queue.json").read_text())["items"]
        expect = sum(1 for it in queue if it["signals"].get("fragmented", -1) >= 0.05)
        assert driver.find_element(By.ID, "count").text == str(expect) and 0 < expect < 36
        assert driver.save_screenshot(str(tmp_path / "review.png")) and (tmp_path / "review.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_page_stays_fast_on_ten_thousand_annotations(review_dir, tmp_path):
    from selenium.webdriver.common.by import By

    thumb = next((review_dir / "page" / "thumbs").glob("*.jpg"))
    (tmp_path / "thumbs").mkdir()
    shutil.copy(thumb, tmp_path / "thumbs" / "t.jpg")
    rng = np.random.default_rng(0)
    items = [{"id": i, "image_id": i // 8, "file_name": f"{i // 8}.jpg", "category_id": i % 5, "category": f"c{i % 5}",
              "risk": float(r), "rank": i + 1, "signals": {"tiny": float(r)}, "top": "tiny", "done": False,
              "thumb": "thumbs/t.jpg", "image_href": f"{i // 8}.jpg"} for i, r in enumerate(rng.random(10_000))]
    write_page(tmp_path, items, "10k", page_size=120)
    driver = _driver(tmp_path)
    try:
        t0 = time.perf_counter()
        driver.get((tmp_path / "index.html").as_uri())
        _wait_ready(driver)
        load_s = time.perf_counter() - t0
        assert driver.find_element(By.ID, "count").text == "10000"
        assert len(driver.find_elements(By.CSS_SELECTOR, "div.item[data-ann-id]")) == 120  # one page in the DOM
        t1 = time.perf_counter()
        driver.execute_script("var s = document.getElementById('f-class'); s.value = 'c3';"
                              "s.dispatchEvent(new Event('change'));")
        assert driver.find_element(By.ID, "count").text == "2000"
        filter_s = time.perf_counter() - t1
        assert load_s < 30 and filter_s < 10, (load_s, filter_s)  # generous: the machine is shared
    finally:
        driver.quit()
