"""The status page in a real browser (Debian's chromium, headless, driven by Selenium through
chromedriver): what it shows is what ``/status`` says, it updates live, and a wrong token
gets no data. `make test` installs the browser (Makefile `browser`); this test fails, never
skips, without it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import urllib.request

import pytest

from tests.helpers.live_job import LiveJob

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DISTCB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DISTCB_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 20.0


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(
            f"the browser test needs {missing}: `make browser` installs Debian's chromium and "
            "chromium-driver (apt-get, as root); `make test` does it first"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1200,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read back
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def fetch_status(job: LiveJob) -> dict:
    request = urllib.request.Request(
        f"http://{job.address}/status", headers={"Authorization": f"Bearer {job.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_for(condition, what: str, timeout_s: float = WAIT_S):
    """Poll `condition()` until it returns something true; fail naming `what` and its last
    answer."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last is True or (last and not isinstance(last, list)):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: still {last!r} after {timeout_s} s")


# Read the page in one script call: the page redraws every second, so elements found one by
# one could belong to two different drawings.
SNAPSHOT = """
const all = (css, root) => Array.from((root || document).querySelectorAll(css));
const text = (css) => { const n = document.querySelector(css); return n ? n.textContent : null; };
const data = (root, css, key) => {
  const n = root.querySelector(css);
  return n ? n.dataset[key] : null;
};
const points = (root) => {
  const line = root.querySelector("polyline");
  const value = line ? line.getAttribute("points").trim() : "";
  return value ? value.split(" ").length : 0;
};
return {
  phase: text("#phase"), epoch: text("#epoch"), step: text("#global-step"),
  live: text("#world-size"),
  workers: all("#workers tbody tr").map((row) => Object.fromEntries(
    all("td", row).map((cell) => [cell.className, [cell.textContent, cell.dataset.value]]))),
  plots: all("#metrics .plot").map((plot) => ({
    name: plot.dataset.metric, points: plot.dataset.points, drawn: points(plot),
    last: data(plot, ".last", "value")})),
  spread: all("#spread .plot").map((plot) => ({
    name: plot.dataset.metric, points: plot.dataset.points,
    min: data(plot, ".min", "value"), max: data(plot, ".max", "value"),
    min_rank: plot.querySelector(".min-rank").textContent,
    max_rank: plot.querySelector(".max-rank").textContent,
    band: plot.querySelector("polygon") !== null})),
  decisions: all("#decisions tbody tr").map((row) => ({
    time: data(row, ".time", "value"), what: row.querySelector(".what").textContent,
    by: row.querySelector(".by").textContent, count: row.dataset.count,
    kind: row.dataset.kind})),
  step_title: document.querySelector("#global-step").title,
  lr_plot: (() => {
    const plot = document.querySelector('#metrics .plot[data-metric="learning_rate"]');
    if (!plot) return null;
    const line = plot.querySelector("polyline").getAttribute("points").trim();
    return {scale: plot.dataset.scale,
            ys: line ? line.split(" ").map((p) => Number(p.split(",")[1])) : []};
  })(),
  icon: (document.querySelector('link[rel="icon"]') || {}).href || null,
  sinks: Object.fromEntries(all("#sinks tbody tr").map((row) => [row.dataset.sink,
    Object.fromEntries(all(".stats span", row).map(
      (s) => [s.dataset.key, JSON.parse(s.dataset.value)]))])),
};
"""


def mismatches(driver, status: dict) -> list[str]:
    """Where the page differs from `status` (empty: it shows exactly that status)."""
    page = driver.execute_script(SNAPSHOT)
    wrong: list[str] = []

    def check(what, shown, expected):
        if shown != expected:
            wrong.append(f"{what}: page {shown!r}, /status {expected!r}")

    check("phase", page["phase"], status["phase"])
    check("epoch", page["epoch"], expected_epoch(status))
    streamed = status["batches_streamed"]
    check("global step", page["step"], str(status["global_step"]) if streamed else "not streamed")
    check("live", page["live"], f"{len(status['live'])}/{status['world_size']} live")
    check("worker rows", len(page["workers"]), len(status["workers"]))
    for cells, worker in zip(page["workers"], status["workers"], strict=False):
        rank = worker["rank"]
        for key in ("rank", "host", "state", "epoch"):
            check(f"rank {rank} {key}", cells[key][0], str(worker[key]))
        check(f"rank {rank} step", cells["step"][1], str(worker["step"]))
        if not streamed:
            check(f"rank {rank} step shown", cells["step"][0], "not streamed")
        check(f"rank {rank} lag", cells["lag"][1], str(worker["lag_steps"]))
        age = float(cells["heartbeat"][1])
        if not 0 <= age < 5:
            wrong.append(f"rank {rank} heartbeat age {age}")
    history = status["history"]
    plots = {p["name"]: p for p in page["plots"]}
    check("metric plots", sorted(plots), sorted(history))
    for name, values in history.items():
        if name in plots:
            check(f"{name} points", plots[name]["points"], str(len(values)))
            check(f"{name} drawn", plots[name]["drawn"], len(values))
            check(f"{name} last", float(plots[name]["last"]), values[-1])
    spreads = {p["name"]: p for p in page["spread"]}
    check("spread of", sorted(spreads), sorted(status["monitored"]))
    for name in status["monitored"]:
        expected, shown = status["epoch_spread"][name], spreads.get(name)
        if shown is None:
            continue
        check(f"{name} min", float(shown["min"]), expected["min"])
        check(f"{name} max", float(shown["max"]), expected["max"])
        check(f"{name} ranks", (shown["min_rank"], shown["max_rank"]), (
            str(expected["min_rank"]), str(expected["max_rank"])
        ))  # fmt: skip
        epochs = len(status["epoch_spread_history"][name])
        check(f"{name} spread epochs", shown["points"], str(epochs))
        check(f"{name} band drawn", shown["band"], epochs > 0)
    expected_rows = collapsed(status["decisions"])
    check("decision rows", len(page["decisions"]), len(expected_rows))
    for row, (record, count) in zip(page["decisions"], expected_rows, strict=False):
        check("decision made by", row["by"], record["made_by"])
        check("decision kind", row["what"].split(" ")[0], record["kind"])
        check("decision kind data", row["kind"], record["kind"])
        check("decision count", row["count"], str(count))
        check("decision time", float(row["time"]), record["time"])
    check("sinks", page["sinks"], status["sinks"])
    return wrong


def expected_epoch(status: dict) -> str:
    """What the page's epoch says: Keras's 1-based count, or how many epochs finished."""
    epochs, done = status["epochs"], status["epochs_done"]
    if status["phase"] == "done":
        return f"stopped early at {done}/{epochs}" if done < epochs else f"finished {done}/{epochs}"
    return f"{status['epoch'] + 1}/{epochs}"


def collapsed(records: list[dict]) -> list[tuple[dict, int]]:
    """The decision rows the page should show: newest first, a run of saves (or backups,
    snapshots, releases) by one callback as one row with its count."""
    rows: list[list] = []
    for record in reversed(records):
        last = rows[-1][0] if rows else None
        if (
            last is not None
            and record["kind"] in ("save", "backup", "snapshot", "release")
            and (last["kind"], last["made_by"]) == (record["kind"], record["made_by"])
        ):
            rows[-1][1] += 1
        else:
            rows.append([record, 1])
    return [(record, count) for record, count in rows]


def page_matches(driver, job: LiveJob) -> dict | list[str]:
    """The status when the page shows it, else what differs."""
    status = fetch_status(job)
    return mismatches(driver, status) or status


def server_logs(caplog) -> str:
    """What distcb's and aiohttp's loggers wrote (Selenium logs the URLs it is told to open)."""
    return "\n".join(
        r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("distcb", "aiohttp")
    )


def test_the_page_shows_the_status_live_and_only_to_the_token(browser, tmp_path, caplog):
    from selenium.webdriver.common.by import By

    caplog.set_level(logging.DEBUG)
    with LiveJob(tmp_path, hold_at=3) as job:
        browser.get(f"http://{job.address}/?token={job.token}")
        assert browser.current_url == f"http://{job.address}/"  # the token left the address
        wait_for(job.gate.held.is_set, "the job reaching its held epoch")
        # The sinks have done their work for epochs 0-2 (posts, rows, saves).
        wait_for(lambda: job.monitor.statistics().sent == 3, "3 RemoteMonitor posts")
        wait_for(lambda: job.csv.statistics()["rows_written"] == 3, "3 CSV rows")
        status = wait_for(lambda: page_matches(browser, job), "the page showing what /status says")
        # What the page showed is a job in the middle of its epoch 3 barrier.
        assert status["phase"] == "training"
        assert status["epoch"] == 3
        assert [w["state"] for w in status["workers"]] == ["at_barrier", "at_barrier"]
        assert status["history_epochs"] == [0, 1, 2]
        assert len(status["epoch_spread_history"]["val_loss"]) == 3
        assert status["epoch_spread"]["val_loss"]["max_rank"] == 1
        assert {d["made_by"] for d in status["decisions"]} == {
            "LearningRateScheduler",
            "ModelCheckpoint",
        }
        assert status["sinks"]["RemoteMonitor"]["sent"] == 3
        assert status["sinks"]["CSVLogger"]["rows_written"] == 3
        assert status["sinks"]["ModelCheckpoint"]["saves"] == 3
        assert status["global_step"] == 16  # 4 steps in each of epochs 0-3 (3: at its barrier)
        assert [w["step"] for w in status["workers"]] == [3, 3]
        assert status["sinks"]["TensorBoard"]["runs"] == ["train", "validation"]
        screenshot = tmp_path / "status_page.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"status page screenshot: {screenshot}")

        # Live: the job goes on; the page follows without a reload.
        page = browser.find_element(By.TAG_NAME, "body")
        job.release()
        job.wait_done()
        final = wait_for(
            lambda: (snap := browser.execute_script(SNAPSHOT))["phase"] == "done" and snap,
            "the page showing the job done",
        )  # fmt: skip
        stops = [d for d in final["decisions"] if d["by"] == "EarlyStopping"]
        assert [d["what"] for d in stops] == ["stop"]
        times = [float(d["time"]) for d in final["decisions"]]
        assert times == sorted(times, reverse=True)  # newest first
        assert final["epoch"] == "stopped early at 5/8"  # 5 epochs ran, not "epoch 4/8"
        assert page == browser.find_element(By.TAG_NAME, "body")  # the same document
        assert job.history.epoch == [0, 1, 2, 3, 4]

        # Another browser profile state: no cookie, a wrong token. No data at all.
        browser.delete_all_cookies()
        browser.get(f"http://{job.address}/?token=not-the-token")
        assert "Wrong token" in browser.find_element(By.ID, "login-message").text
        assert not browser.find_elements(By.ID, "workers")
        assert "scripted-0" not in browser.page_source
        for path in ("status", "events"):
            browser.get(f"http://{job.address}/{path}")
            assert "missing or wrong token" in browser.page_source
            assert "scripted-0" not in browser.page_source
        # Signing in through the form works too.
        browser.get(f"http://{job.address}/")
        browser.find_element(By.ID, "token").send_keys(job.token)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for(lambda: browser.execute_script(SNAPSHOT)["phase"] == "done", "signed in")
        job.close()
        wait_for(
            lambda: browser.find_element(By.ID, "connection").text.startswith("ended"),
            "the page saying the coordinator shut down",
        )
    logs = server_logs(caplog)
    assert "rejected a sign-in to the status page" in logs
    assert job.token not in logs


def test_steps_not_streamed_saves_collapsed_lr_on_a_log_scale_and_no_favicon_request(
    browser, tmp_path
):
    from distcb.callbacks import ModelCheckpoint, ReduceLROnPlateau

    # No callback with a batch hook: workers stream no batch logs. A checkpoint every epoch,
    # and a learning rate cut tenfold every third epoch (loss falls, "max" sees no gain).
    callbacks = [
        ReduceLROnPlateau(monitor="loss", mode="max", factor=0.1, patience=1, cooldown=2),
        ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), monitor="loss"),
    ]
    with LiveJob(tmp_path, hold_at=7, callbacks=callbacks) as job:
        browser.get(f"http://{job.address}/?token={job.token}")
        wait_for(job.gate.held.is_set, "the job reaching its held epoch")
        status = wait_for(lambda: page_matches(browser, job), "the page showing what /status says")
        page = browser.execute_script(SNAPSHOT)
        console = browser.get_log("browser")
        job.release()
    assert status["batches_streamed"] is False
    assert page["step"] == "not streamed"
    assert "no coordinator callback has a batch hook" in page["step_title"]
    assert [w["step"][0] for w in page["workers"]] == ["not streamed", "not streamed"]
    assert page["epoch"] == "8/8"
    # Saves that follow each other are one row, newest first.
    counts = [(d["kind"], d["count"]) for d in page["decisions"]]
    assert ("save", "2") in counts, counts
    assert counts[0][0] in ("save", "set_lr"), counts
    assert len(page["decisions"]) < len(status["decisions"])
    # The learning rate went 0.1, 0.01, 0.001, ...: on a log scale each decade is as high.
    rates = [float(f"{r:.4g}") for r in status["history"]["learning_rate"]]  # float32 noise
    decades = sorted(set(rates), reverse=True)
    assert decades[:3] == [0.1, 0.01, 0.001], rates
    assert page["lr_plot"]["scale"] == "log"
    ys = dict(zip(rates, page["lr_plot"]["ys"], strict=True))
    gaps = [ys[low] - ys[high] for high, low in zip(decades, decades[1:], strict=False)]
    assert gaps == pytest.approx([gaps[0]] * len(gaps), abs=0.2), ys
    # The icon is inline: the browser never asks the coordinator for /favicon.ico.
    assert not [e for e in console if "favicon" in e["message"] or "404" in e["message"]], console
    assert page["icon"].startswith("data:image/svg+xml")
