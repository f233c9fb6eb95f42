"""The bench's report: the README shows what the newest kept run printed, and the sizing model scales as it says.

No timing is asserted here (figures belong to bench runs, not tests): these tests check the
arithmetic and the bookkeeping around the figures.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import readme, sizing


def test_the_readme_table_is_the_newest_kept_run() -> None:
    """README.md's performance block is exactly what `python -m bench.readme` renders from the newest results
    file: a run that is kept without regenerating it, or a hand edit of a figure, fails here."""
    source = readme.newest_results()
    text = readme.README.read_text()
    assert text.count(readme.README_BEGIN) == 1 and text.count(readme.README_END) == 1
    expected = readme.rendered_readme(text, json.loads(source.read_text()), source)
    assert text == expected, f"README.md's table is not the one {source.name} gives: run `python -m bench.readme`"


def test_a_readme_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="no block"):
        readme.rendered_readme("# a README without a table", {}, readme.newest_results())


# -- the sizing model --------------------------------------------------------------------------------

CONTROL = {"size_mb": 25.0, "calls": 5, "dropgate": {"cpu_s": {"presign": 0.050, "postgres": 0.004,
                                                             "seaweedfs": 0.300, "client": 0.200}},
           "raw": {"cpu_s": {"postgres": 0.0, "seaweedfs": 0.290, "client": 0.180}}}
PIPELINE = {"size_mb": 25.0, "cpu_s": {"storage_events": 0.02, "metadata": 0.01, "scan": 0.07, "clamd": 0.5,
                                       "postgres": 0.02},
            "events": 3.0, "deliveries": 2.0, "storage_requests": 9.0, "verdict_s": 0.7}


@pytest.fixture(scope="module")
def shipped() -> sizing.Shipped:
    """The production overlay as rendered: the model sizes against the limits that really ship."""
    return sizing.Shipped.read()


def test_the_model_reads_the_shipped_limits(shipped) -> None:
    assert shipped.cpu[sizing.CONTROL] == 1.0  # presign: one core per pod (manifests/base/functions/presign.yaml)
    assert shipped.concurrency[sizing.PIPELINE_SERVICES["scan"]] == 2
    assert shipped.clamd_threads == 4  # manifests/base/clamd/clamd.conf MaxThreads


def test_uploads_per_second_follow_littles_law(shipped) -> None:
    plan = sizing.plan(CONTROL, PIPELINE, shipped, 400, uplink_mbit=20)
    # 25 MB at 20 Mbit/s take 10 s: 400 uploaders finish 40 uploads a second.
    assert plan["uploads_per_s"] == 40.0
    assert plan["control_calls_per_s"] == 200.0
    # presign: 40/s × 50 ms = 2 cores busy, sized at 60 %: 3.33 cores, one core per pod: 4 pods.
    assert plan["presign"]["cores"] == pytest.approx(40 * 0.050 / sizing.TARGET_UTILISATION, abs=0.01)
    assert plan["presign"]["replicas"] == math.ceil(40 * 0.050 / sizing.TARGET_UTILISATION)
    # 40/s × 0.7 s to verdict: 28 scans under way, 2 per scan pod, 4 threads per clamd pod.
    assert plan["clamd"]["threads_busy"] == 28.0
    assert plan["scan"]["replicas"] >= 14 and plan["clamd"]["replicas"] >= 7
    assert plan["storage"]["requests_per_s"] == 360.0 and plan["broker"]["events_per_s"] == 120.0


def test_ten_times_the_users_needs_about_ten_times_everything(shipped) -> None:
    small, large = (sizing.plan(CONTROL, PIPELINE, shipped, users) for users in (4_000, 40_000))
    for piece in ("presign", "storage_events", "metadata", "scan", "clamd"):
        assert 9 * small[piece]["replicas"] <= large[piece]["replicas"] <= 10 * small[piece]["replicas"] + 1
    assert large["storage"]["ingress_mb_s"] == 10 * small["storage"]["ingress_mb_s"]


def test_what_the_shipped_overlay_cannot_hold_is_said(shipped) -> None:
    plan = sizing.plan(CONTROL, PIPELINE, shipped, 40_000)
    assert not plan["presign"]["enough_as_shipped"]
    assert plan["presign"]["shipped_max_scale"] == shipped.max_scale[sizing.CONTROL]
    assert not plan["postgres"]["fits_default_max_connections"]
    assert plan["broker"]["kafka_partitions"] > sizing.KAFKA_DEFAULT_PARTITIONS
    few = sizing.plan(CONTROL, PIPELINE, shipped, 10)
    assert few["presign"]["enough_as_shipped"] and few["postgres"]["fits_default_max_connections"]
    assert few["broker"]["kafka_partitions"] == sizing.KAFKA_DEFAULT_PARTITIONS


def test_the_check_compares_a_prediction_from_one_clients_costs(shipped) -> None:
    """Two cores, 554 ms of CPU per 25 MB upload on dropgate's path: 90 MB/s predicted."""
    found = sizing.check(CONTROL, 2, {"dropgate": [85.0, 95.0, 100.0], "raw": [60.0]})
    assert found["dropgate"]["predicted_mb_s"] == pytest.approx(2 * 25 / 0.554)
    assert found["dropgate"]["measured_mb_s"] == 95.0 and found["dropgate"]["within"]
    assert found["raw"]["predicted_mb_s"] == pytest.approx(2 * 25 / 0.470)
    assert not found["raw"]["within"]  # 106 predicted against 60 measured: outside ±25 %
