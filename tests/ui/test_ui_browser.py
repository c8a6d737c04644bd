"""The UI in a real browser (Chromium, driven by Playwright) over stores the demo wrote.

Each test opens pages as a person would, checks what they show (rows, a curve's points per branch, a
lineage node per checkpoint, a heatmap as wide as its layer, filters that change the rows), saves a
screenshot of each page in its temporary folder, and fails on any console error or script error (a
Content-Security-Policy violation is one) and on any dialog (a script from the store ran).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from ui_helpers import HOSTILE_NAME, HOSTILE_TEXT, build_hostile_store, serving

from weightslab.events.domain import Evaluated, StepsTrained
from weightslab.history.branches import branch_of_entries
from weightslab.history.diff import diff_checkpoints
from weightslab.history.log import walk
from weightslab.history.store import Store

pytestmark = pytest.mark.slow

# The series of an ECharts chart: [name, number of points, number of marker lines].
SERIES = """id => echarts.getInstanceByDom(document.getElementById(id)).getOption().series
    .map(s => [s.name, s.data.length, s.markLine ? s.markLine.data.length : 0])"""


# The drawn nodes of a tree chart: [checkpoint (None: the initial state), x, y] in the page.
NODES = """id => { const chart = echarts.getInstanceByDom(document.getElementById(id));
    const data = chart.getModel().getSeriesByIndex(0).getData();
    const box = document.getElementById(id).getBoundingClientRect();
    return data.mapArray(i => data.getItemGraphicEl(i)).map((el, i) => el && [data.getRawDataItem(i).checkpoint,
        ...el.transformCoordToGlobal(0, 0).map((v, k) => v + (k ? box.top : box.left))]).filter(n => n); }"""


@pytest.fixture(scope="module")
def demo(demo_store, chromium):  # chromium first: without a browser, nothing is served
    with serving(demo_store) as url:
        yield url


def _expected_points(store: str, name: str) -> dict[str, int]:
    """Points per line ("BRANCH · SPLIT") of an experiment, from its log."""
    with Store.open(store, create=False, read_only=True) as s:
        log = walk(s, name)
    counts: Counter[str] = Counter()
    for entry, branch in zip(log, branch_of_entries(log)):
        if isinstance(entry.event, StepsTrained | Evaluated):
            counts[f"{branch} · {'train' if isinstance(entry.event, StepsTrained) else 'eval'}"] += 1
    return dict(counts)


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    page.wait_for_function("() => [...document.querySelectorAll('[data-chart]')].every(e => e.dataset.drawn)")


def _shot(page, name: str) -> None:
    page.screenshot(path=str(Path(page.shots) / f"{name}.png"), full_page=True)


def test_experiments_page_lists_filters_sorts_and_overlays_runs(page, demo):
    _open(page, demo + "/")
    rows = page.locator("tr.experiment")
    assert rows.count() == 2
    _shot(page, "experiments")
    page.fill("#q", "other")
    page.wait_for_function("() => document.querySelectorAll('tr.experiment').length === 1")
    assert "other-run" in rows.first.inner_text()
    page.fill("#q", "")
    page.wait_for_function("() => document.querySelectorAll('tr.experiment').length === 2")
    page.click("a[data-sort=events]")  # ascending: the one-event run first
    page.wait_for_function("() => document.querySelector('tr.experiment td.name').innerText === 'other-run'")
    page.click("a[data-sort=events]")  # descending
    page.wait_for_function("() => document.querySelector('tr.experiment td.name').innerText === 'demo'")
    for box in page.locator("tr.experiment input[type=checkbox]").all():
        box.check()
    page.click("#compare button[type=submit]")
    _open(page, page.url)
    names = [s[0] for s in page.evaluate(SERIES, "loss-chart")]
    assert "other-run · c0 · train" in names and "demo · c1-from-c0 · train" in names
    _shot(page, "compare")
    assert page.problems == []


def test_experiment_page_shows_a_curve_per_branch_hoverable_markers_the_lineage_and_the_timeline(page, demo, demo_store):
    _open(page, demo + "/experiments/1")
    series = page.evaluate(SERIES, "loss-chart")
    assert {name: n for name, n, _ in series} == _expected_points(demo_store, "demo")
    assert {name.split(" · ")[0] for name, _, _ in series} == {"c0", "c1-from-c0", "c2-from-c0"}
    assert sum(m for _, _, m in series) >= 3  # marker lines: the operations, grouped by age

    # hovering a marker line shows its operations (one that no other branch has at the same age)
    spot = page.evaluate("""() => {
        const chart = echarts.getInstanceByDom(document.getElementById('loss-chart'));
        window.hovered = [];
        chart.on('mouseover', p => window.hovered.push(p.componentType + ': ' + (p.data && p.data.text || '')));
        const lines = chart.getOption().series.flatMap(s => (s.markLine ? s.markLine.data : []).map(d => [s, d]));
        const [s, d] = lines.find(([, d]) => lines.filter(([, e]) => e.xAxis === d.xAxis).length === 1);
        const [x] = chart.convertToPixel({seriesName: s.name}, [d.xAxis, s.data[0].value[1]]);
        const box = document.getElementById('loss-chart').getBoundingClientRect();
        return [box.left + x, box.top + 60, d.text];
    }""")
    page.mouse.move(spot[0] - 20, spot[1])
    page.mouse.move(spot[0], spot[1], steps=4)
    page.wait_for_function("text => window.hovered.includes('markLine: ' + text)", arg=spot[2])

    # a lineage node per checkpoint, and a click on one shows its diff against its parent
    nodes = page.evaluate(NODES, "lineage-chart")
    with Store.open(demo_store, create=False, read_only=True) as store:
        checkpoints = store.checkpoints(store.get_experiment("demo").experiment_id)
        expected = diff_checkpoints(store, "demo", 0, 1)
    assert sorted(n[0] for n in nodes if n[0] is not None) == [c.checkpoint_id for c in checkpoints]
    assert len(nodes) == len(checkpoints) + 1  # and the initial state
    _, x, y = next(n for n in nodes if n[0] == 1)
    page.mouse.click(x, y)
    page.wait_for_selector("#diff-1")
    diff = page.inner_text("#diff")
    assert "against its parent, checkpoint 0" in diff
    assert page.inner_text("#tensors-changed") == str(len(expected.tensors_changed))
    assert f"{expected.architecture_a} → {expected.architecture_b}" in diff

    # the timeline: every event; filtered by kind; each with its payload, hashes and audit badge
    assert page.locator("tr.event").count() == 50  # the newest page
    page.wait_for_selector("tr.event .badge.verified")
    page.check("input[name=kind][value=prune]")
    page.wait_for_function("() => [...document.querySelectorAll('tr.event')].every(r => r.dataset.kind === 'prune')")
    assert page.locator("tr.event").count() == 1
    page.click("tr.event summary")
    assert '"layer_index": 1' in page.inner_text("tr.event pre") and "hash " in page.inner_text("tr.event .mono")
    _shot(page, "experiment")
    assert page.problems == []


def test_neurons_page_has_a_heatmap_per_layer_as_wide_as_the_layer(page, demo, demo_store):
    from weightslab.surgery.report import _flags  # the rule of exp.display_stats()

    _open(page, demo + "/experiments/1/neurons")
    with Store.open(demo_store, create=False, read_only=True) as store:
        now = store.query("SELECT layer_index, neuron_index, trigger_count, seen_samples FROM neuron_stats "
                          "WHERE experiment_id = 1 AND split = 'train' ORDER BY layer_index, neuron_index")
    for layer, rows in now.groupby("layer_index"):
        block = page.locator(f"#layer-{layer}")
        assert block.get_attribute("data-width") == str(len(rows))
        flagged = _flags(rows["trigger_count"].tolist(), rows["seen_samples"].tolist())
        assert block.locator(".badge.dead, .badge.weak").count() == sum(1 for f in flagged if f)
        if not rows["seen_samples"].any():
            continue  # the output layer: never tracked
        heat = page.evaluate("""el => { const o = echarts.getInstanceByDom(el).getOption();
            const last = o.xAxis[0].data.length - 1;
            return [o.yAxis[0].data.length, o.series[0].data.filter(c => c[0] === last).length]; }""",
                             block.locator("[data-chart=heatmap][data-split=train]").element_handle())
        assert heat[1] == len(rows)  # now: a cell per neuron of the layer
        assert heat[0] >= len(rows)  # rows: the widest the layer has been
    widths = page.evaluate(SERIES, "widths-chart")
    assert [w[0] for w in widths] == [f"layer {i}" for i in range(4)]
    _shot(page, "neurons")
    assert page.problems == []


def test_samples_page_pages_sorts_filters_and_shows_histograms_and_thumbnails(page, demo, demo_store):
    _open(page, demo + "/experiments/1/samples")
    assert page.locator("tr.sample").count() == 50
    with Store.open(demo_store, create=False, read_only=True) as store:
        threes = int(store.query("SELECT COUNT(*) FROM sample_stats WHERE experiment_id = 1 AND split = 'train' "
                                 "AND label = 3").iloc[0, 0])
        top = float(store.query("SELECT MAX(prediction_loss) FROM sample_stats WHERE experiment_id = 1 "
                                "AND split = 'train'").iloc[0, 0])
    page.fill("#where", "label in [3]")
    page.select_option("select[name=sort]", "prediction_loss")
    page.select_option("select[name=order]", "desc")
    page.click("#sample-filter button[type=submit]")
    page.wait_for_function(f"() => document.getElementById('sample-count')?.dataset.total === '{threes}'")
    labels = page.locator("tr.sample td:nth-child(3)").all_inner_texts()
    assert labels and set(labels) == {"3"}
    page.fill("#where", "")
    page.click("#sample-filter button[type=submit]")
    page.wait_for_function("() => document.getElementById('sample-count')?.dataset.total === '1498'")
    losses = [float(t) for t in page.locator("tr.sample td:nth-child(5)").all_inner_texts()]
    assert losses == sorted(losses, reverse=True) and abs(losses[0] - top) < 1e-4
    page.click("#next-page")
    page.wait_for_function("() => document.getElementById('previous-page') !== null")
    after = [float(t) for t in page.locator("tr.sample td:nth-child(5)").all_inner_texts()]
    assert len(after) == 50 and after[0] <= losses[-1]
    page.wait_for_selector("#histogram-chart[data-drawn]")
    assert len(page.evaluate(SERIES, "histogram-chart")) == 10  # a bar series per label
    page.locator("img.thumb").first.scroll_into_view_if_needed()  # thumbnails load when near the view
    page.wait_for_function("() => { const i = document.querySelector('img.thumb'); return i.complete && "
                           "i.naturalWidth > 0; }", timeout=90_000)
    _shot(page, "samples")
    page.fill("#where", "loss > 1")
    page.click("#sample-filter button[type=submit]")
    page.wait_for_selector("#filter-error")
    assert "unknown column 'loss'" in page.inner_text("#filter-error")
    assert page.problems == []


def test_a_running_experiments_new_events_appear_without_a_reload(page, demo_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    with serving(str(store), warm=False) as url:
        _open(page, url + "/experiments/1")
        page.evaluate("() => { window.stayed = true; }")
        before = int(page.locator("tr.event").first.get_attribute("data-seq"))
        points = dict((s[0], s[1]) for s in page.evaluate(SERIES, "loss-chart"))
        script = (
            "import sys, torch\nfrom torch import optim\nfrom weightslab import Experiment\n"
            "from weightslab.demo import MNISTModel, digits_datasets\n"
            "train, evaluation = digits_datasets()\ntorch.manual_seed(0)\n"
            "exp = Experiment(model=MNISTModel(), optimizer_class=optim.Adam, train_dataset=train, "
            "eval_dataset=evaluation, learning_rate=1e-2, batch_size=64, name='demo', store=sys.argv[1], "
            "recipe='weightslab.demo:recipe', tensorboard_dir=sys.argv[2])\n"
            "exp.train_n_steps(2)\nexp.close()\n")
        run = subprocess.run([sys.executable, "-c", script, str(store), str(tmp_path / "tb")], capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        page.wait_for_selector(f'tr.event[data-seq="{before + 2}"]', timeout=30_000)  # resume, train
        assert page.evaluate("() => window.stayed") is True  # the same page: no reload
        assert page.inner_text(f'tr.event[data-seq="{before + 2}"] td:nth-child(3)') == "train"
        page.wait_for_function("() => [...document.querySelectorAll('[data-chart]')].every(e => e.dataset.drawn)")
        grown = dict((s[0], s[1]) for s in page.evaluate(SERIES, "loss-chart"))
        assert sum(grown.values()) == sum(points.values()) + 1
        _shot(page, "live")
    assert page.problems == []


@pytest.mark.postgres
def test_the_ui_serves_a_postgresql_store(page, demo_stores):
    if demo_stores.postgres is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {demo_stores.postgres_problem}")
        pytest.skip(f"skipping PostgreSQL test: {demo_stores.postgres_problem}")
    pg_url = demo_stores.postgres
    with serving(pg_url) as url:
        _open(page, url + "/")
        assert page.locator("tr.experiment").count() == 1
        _open(page, url + "/experiments/1")
        series = page.evaluate(SERIES, "loss-chart")
        assert {name: n for name, n, _ in series} == _expected_points(pg_url, "demo-pg")
        assert sorted(n[0] for n in page.evaluate(NODES, "lineage-chart") if n[0] is not None) == [0, 1, 2]
        _open(page, url + "/experiments/1/samples?sort=prediction_loss&order=desc")
        assert page.locator("tr.sample").count() == 50
        _shot(page, "postgres")
    assert page.problems == []


def test_a_hostile_name_and_payload_stay_text_in_the_browser(page, tmp_path):
    target = str(tmp_path / "store")
    eid = build_hostile_store(target)
    with serving(target) as url:
        _open(page, url + "/")
        assert page.inner_text("tr.experiment td.name") == HOSTILE_NAME
        _open(page, url + f"/experiments/{eid}")
        assert page.inner_text("#experiment-name") == HOSTILE_NAME
        for summary in page.locator("tr.event summary").all():
            summary.click()
        text = page.inner_text("#events")
        assert HOSTILE_TEXT in text and f"kind{HOSTILE_TEXT}" in text
        _open(page, url + f"/experiments/{eid}/samples")
        page.fill("#where", "<img src=x onerror=alert(3)>")
        page.click("#sample-filter button[type=submit]")
        page.wait_for_selector("#filter-error")
        _shot(page, "hostile")
        assert page.locator("img[src=x]").count() == 0
    assert page.problems == []
