"""Every page and fragment over the recorded history of tests/cli/store_builder.py, on SQLite and PostgreSQL.

In-process (Starlette's TestClient): the HTML the server sends, and the JSON it embeds for the charts.
The browser tests (test_ui_browser.py) check what a person sees.
"""

from __future__ import annotations

import json
import re
from html import unescape

import numpy as np
import pytest
from cli.store_builder import NAME
from starlette.testclient import TestClient

from weightslab.history.diff import diff_checkpoints
from weightslab.ui.app import create_app
from weightslab.ui.samples import SampleQuery, page


@pytest.fixture
def client(built):
    with TestClient(create_app(built.target, warm=False), base_url="http://127.0.0.1") as c:
        yield c


def _json(html: str, element_id: str):
    """The chart data a page embeds in element ``element_id`` (its ``data-json`` attribute)."""
    found = re.search(rf'id="{element_id}" data-json=\'(.*?)\'', html, flags=re.S)
    assert found, f"no #{element_id} in the page"
    return json.loads(unescape(found.group(1)))


def _rows(html: str, cls: str) -> list[str]:
    return re.findall(rf'<tr class="{cls}" ([^>]*)>', html)


def test_experiments_page_shows_one_row_per_experiment_with_counts_and_last_values(client, built):
    html = client.get("/").text
    (row,) = _rows(html, "experiment")
    assert f'data-experiment-id="{built.experiment_id}"' in row
    cells = re.search(r'<tr class="experiment".*?</tr>', html, flags=re.S).group(0)
    assert NAME in cells and ">16<" in cells and ">4<" in cells  # events, checkpoints
    assert ">7<" in cells  # denied samples: {1, 3, 10..14}
    assert "batch_size=4" in cells and "0.5000" in cells  # hyper-parameters; the last eval loss


def test_experiments_page_filters_and_sorts_on_the_server(client):
    assert len(_rows(client.get("/?q=x0").text, "experiment")) == 1
    assert len(_rows(client.get("/?q=no-such-run").text, "experiment")) == 0
    assert client.get("/?sort=events&order=desc").status_code == 200


def test_experiment_page_has_a_line_per_branch_the_lineage_and_the_timeline(client, built):
    html = client.get(f"/experiments/{built.experiment_id}").text
    curves = _json(html, "curves-data")
    # 1 create, train, eval, dump 0 | prune, deny, dump 1 | load 0 ... dump 2 | load 1 ... dump 3 | train
    assert [b["name"] for b in curves["branches"]] == ["c0", "c1-from-c0", "c2-from-c0", "c3-from-c1",
                                                       "c4-from-c3"]
    assert [len(b["train"]) for b in curves["branches"]] == [1, 0, 0, 0, 1]
    assert curves["branches"][0]["eval"] == [[60, 0.5, 0.8, 3]]
    markers = {m[1] for b in curves["branches"] for m in b["markers"]}
    assert markers == {1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}  # every event but training and evaluation
    tree = _json(html, "lineage-data")

    def nodes(n):
        return [n["checkpoint"], *[c for child in n["children"] for c in nodes(child)]]

    assert nodes(tree) == [None, 0, 1, 3, 2]
    assert len(_rows(html, "event")) == 16


def test_a_checkpoints_diff_is_what_weightslab_diff_says(client, built):
    html = client.get(f"/experiments/{built.experiment_id}/checkpoints/3/diff").text
    expected = diff_checkpoints(built.store, NAME, 1, 3)
    assert "against its parent, checkpoint 1" in html
    assert f'<span id="tensors-changed">{len(expected.tensors_changed)}</span>' in html
    for e in expected.events_to_b:
        assert f"seq {e.seq}</code>" in html
    root = client.get(f"/experiments/{built.experiment_id}/checkpoints/0/diff").text
    assert "against the initial state" in root
    assert client.get(f"/experiments/{built.experiment_id}/checkpoints/9/diff").status_code == 400


def test_the_timeline_filters_by_kind_and_pages(client, built):
    html = client.get(f"/experiments/{built.experiment_id}/events?kind=deny&kind=prune").text
    kinds = re.findall(r'<tr class="event" data-seq="\d+" data-kind="(\w+)"', html)
    assert sorted(kinds) == ["deny", "deny", "deny", "prune"]
    assert "verified" in html or "auditing" in html


def test_neurons_page_shows_each_layer_with_its_width(client, built):
    html = client.get(f"/experiments/{built.experiment_id}/neurons").text
    assert re.findall(r'data-layer="(\d+)" data-width="(\d+)"', html) == [("0", "1"), ("1", "1")]
    widths = _json(html, "widths-data")
    assert widths["points"][0] == [1, [2, 4]] and [1, 4] in [p[1] for p in widths["points"]]


def test_samples_page_sorts_filters_and_counts(client, built):
    base = f"/experiments/{built.experiment_id}/samples"
    html = client.get(f"{base}?sort=prediction_loss&order=desc").text
    ids = [int(i) for i in re.findall(r'<tr class="sample" data-sample-id="(\d+)"', html)]
    assert ids[:3] == [17, 16, 15] and ids[-2:] == [19, 18]  # never-seen samples (no loss) come last
    filtered = client.get(f"{base}?where=prediction_loss+>+1.0+and+deny_listed").text
    assert re.findall(r'data-sample-id="(\d+)"', filtered) == ["10", "11", "12", "13", "14"]
    bad = client.get(f"{base}?where=__import__('os')")
    assert bad.status_code == 200 and 'id="filter-error"' in bad.text and "cannot use" in bad.text
    histogram = client.get(f"{base}/histogram").text
    assert sum(sum(v) for v in _json(histogram, "histogram-data")["counts"].values()) == 18


def test_keyset_pages_read_every_row_once_in_order_both_ways(built):
    """Pages of 3 rows, followed forwards then backwards, for every sort key and direction."""
    frame = built.store.query("SELECT sample_id, prediction_loss, prediction_age, exposure_amount "
                              "FROM sample_stats WHERE split = 'train'")
    for sort in ("sample_id", "prediction_loss", "prediction_age", "exposure_amount"):
        for descending in (False, True):
            value = frame[sort].astype(float)
            order = sorted(range(len(frame)), key=lambda i: (np.isnan(value[i]), (-1 if descending else 1) * (
                0 if np.isnan(value[i]) else value[i]), (-1 if descending else 1) * frame["sample_id"][i]))
            expected = [int(frame["sample_id"][i]) for i in order]
            query, seen, pages = SampleQuery(sort=sort, descending=descending), [], []
            while True:
                p = page(built.store, built.experiment_id, query, size=3)
                pages.append([r["sample_id"] for r in p.rows])
                seen += pages[-1]
                if not p.has_next:
                    break
                last = p.rows[-1]
                query = SampleQuery(sort=sort, descending=descending, after=(last[sort], last["sample_id"]))
            assert seen == expected, (sort, descending)
            for i in range(len(pages) - 1, 0, -1):  # and back, from each page to the one before it
                first = next(r for r in [page(built.store, built.experiment_id, SampleQuery(
                    sort=sort, descending=descending, before=(_value(frame, sort, pages[i][0]), pages[i][0])),
                    size=3)])
                assert [r["sample_id"] for r in first.rows] == pages[i - 1], (sort, descending, i)


def _value(frame, column, sample_id):
    v = frame.loc[frame["sample_id"] == sample_id, column].iloc[0]
    return None if v != v or v is None else float(v)


def test_the_poll_answers_no_content_until_the_head_moves(client, built):
    eid = built.experiment_id
    assert client.get(f"/experiments/{eid}/poll?seq=16").status_code == 204
    moved = client.get(f"/experiments/{eid}/poll?seq=15")
    assert moved.status_code == 200 and moved.headers["HX-Trigger"] == "newEvents" and 'data-seq="16"' in moved.text
    assert client.get("/poll?sig=old").headers["HX-Trigger"] == "storeChanged"


def test_compare_overlays_the_curves_of_several_experiments(client, built):
    html = client.get(f"/compare?id={built.experiment_id}").text
    assert _json(html, "curves-data")["compare"] is True
    assert client.get("/compare").status_code == 400


def test_unknown_experiments_and_bad_parameters_get_a_clear_answer(client, built):
    missing = client.get("/experiments/999")
    assert missing.status_code == 404 and "no experiment with id 999" in missing.text
    assert client.get(f"/experiments/{built.experiment_id}/samples?sort=password").status_code == 400
    assert client.get(f"/experiments/{built.experiment_id}/events?page=x").status_code == 400
    assert client.get(f"/experiments/{built.experiment_id}/samples/train/0.png").status_code == 404  # no recipe
