"""Monitoring (docs/monitoring.md): the ServiceMonitor, the PrometheusRule and the Grafana dashboard.

The prometheus-operator objects are validated against their CRDs (../shared/schemas/prometheus-operator),
the rules by Prometheus' own promtool (`check rules`, and `test rules` with a firing and a silent case per
alert), the dashboard's structure by what Grafana needs to load it; and every metric a panel or a rule
reads must be one a running stack's functions really serve on /metrics, with rate()/increase() only over
counters and histograms. The vitals (shared/platform/vitals.py) are checked against a real database and
clamd, and the dead-letter Job's recording against a real database.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import psycopg
import pytest
import yaml
from cloudevents.conversion import to_binary
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from dropgate_local.client import call
from dropgate_local.processes import ChildProcess, free_port, http_ok
from events.types import ObjectCreated
from shared.platform import vitals
from shared.platform.clamd import StreamingClamd
from shared.platform.dead_letters import dead_letters_source
from shared.platform.metrics import VITALS
from shared.platform.migrate import apply_migrations
from shared.platform.settings import Settings
from shared.uploads.vitals import uploads_source
from tests.conftest import as_broker
from tests.promql import metric_names, metric_uses
from tests.test_manifests import (
    REPO,
    SCHEMAS,
    SECRET_CONTRACT,
    container,
    knative_services,
    named,
    render,
    strict,
)

MONITORING = REPO / "manifests" / "base" / "monitoring"
OPERATOR_CRDS = {"ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
                 "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml"}
RANGE_FUNCTIONS = {"rate", "irate", "increase"}
COUNTER_SAMPLES = ("_total", "_bucket", "_count", "_sum")  # counters, and a histogram's series (all counters)


# ---------------------------------------------------------------------------------------------- the objects

def operator_objects(kind: str) -> list[dict]:
    return [d for d in render("prod") if d["kind"] == kind and d["apiVersion"].startswith("monitoring.coreos.com/")]


def the_rule() -> dict:
    (rule,) = operator_objects("PrometheusRule")
    return rule


def dashboard() -> dict:
    return json.loads((MONITORING / "dashboard.json").read_text())


@functools.cache
def operator_schema(kind: str) -> dict:
    crd = yaml.safe_load((SCHEMAS / "prometheus-operator" / OPERATOR_CRDS[kind]).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v.get("served")]
    # Closed like the Knative ones (tests/test_manifests.py strict): a misspelt field is an error, not pruned.
    return strict(v1["schema"]["openAPIV3Schema"], top=True)


def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(operator_schema(doc["kind"]))
    return [f"{doc['kind']} {'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_monitoring_objects_match_their_crd_schemas() -> None:
    docs = operator_objects("ServiceMonitor") + operator_objects("PrometheusRule")
    assert {d["kind"] for d in docs} == set(OPERATOR_CRDS)
    errors = [e for d in docs for e in schema_errors(d)]
    assert not errors, "\n".join(errors)
    assert not [d for d in render("dev") if d["apiVersion"].startswith("monitoring.coreos.com/")], \
        "the dev overlay deploys to clusters without the prometheus-operator"


def test_the_schema_check_catches_typos() -> None:
    monitor = copy.deepcopy(operator_objects("ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["bearerToken"] = "x"  # removed from the CRD: authorization instead
    assert schema_errors(monitor)
    rule = copy.deepcopy(the_rule())
    rule["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    assert schema_errors(rule)
    rule = copy.deepcopy(the_rule())
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = rule["spec"]["groups"][0]["rules"][0].pop("expr")
    assert schema_errors(rule)


def test_the_service_monitor_reaches_every_function_pod_on_its_metrics_port() -> None:
    docs = render("prod")
    metrics_service = named(docs, "Service", "dropgate-function-metrics", group="")
    spec = metrics_service["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    (port,) = spec["ports"]
    for name, service in knative_services(docs).items():
        template = service["spec"]["template"]
        assert spec["selector"].items() <= template["metadata"]["labels"].items(), f"{name} is not scraped"
        (container_port,) = container(service)["ports"]
        assert port["targetPort"] == container_port["containerPort"] == int(
            template["metadata"]["annotations"]["prometheus.io/port"]), name
    (monitor,) = operator_objects("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    secret = endpoint["authorization"]["credentials"]
    assert secret["key"] in SECRET_CONTRACT[secret["name"]], "the token the functions' DROPGATE_METRICS_TOKEN reads"
    # The functions admit the monitoring namespace (Prometheus) and scan, which serves the vitals, stays warm.
    policy = named(docs, "NetworkPolicy", "dropgate-functions")
    allowed = policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert "monitoring" in allowed
    scan = knative_services(docs)["dropgate-scan"]["spec"]["template"]["metadata"]["annotations"]
    assert int(scan["autoscaling.knative.dev/min-scale"]) >= 1, "the vitals need a scan pod to be scraped"
    config_map = named(docs, "ConfigMap", "dropgate-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["dashboard.json"]) == dashboard()


# ---------------------------------------------------------------------------------------------- promtool

def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool comes with Debian's prometheus package (local-dev/bootstrap.sh)"
    return found


def write_rules(folder: Path, rule: dict | None = None) -> Path:
    """The PrometheusRule's groups as the rule file Prometheus itself would load."""
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": (rule or the_rule())["spec"]["groups"]}, sort_keys=False))
    return path


def run_promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd,
                          check=False)


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for group in the_rule()["spec"]["groups"] for r in group["rules"] if "alert" in r}


def test_the_rules_pass_promtool_check(tmp_path) -> None:
    done = run_promtool("check", "rules", write_rules(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout
    broken = copy.deepcopy(the_rule())
    broken["spec"]["groups"][0]["rules"][0]["expr"] = "max(dropgate_scan_backlog_oldest_seconds > 1800"
    done = run_promtool("check", "rules", write_rules(tmp_path, broken), cwd=tmp_path)
    assert done.returncode != 0 and "unclosed left parenthesis" in done.stdout + done.stderr


def test_every_alert_fires_and_stays_silent_as_its_promtool_unit_tests_say(tmp_path) -> None:
    cases = yaml.safe_load((REPO / "tests" / "monitoring" / "alerts_test.yaml").read_text())
    checks = [check for test in cases["tests"] for check in test["alert_rule_test"]]
    firing = {c["alertname"] for c in checks if c["exp_alerts"]}
    silent = {c["alertname"] for c in checks if not c["exp_alerts"]}
    assert firing == silent == set(alerts()), "each alert needs a case that fires and one that does not"
    shutil.copy(REPO / "tests" / "monitoring" / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    write_rules(tmp_path)
    done = run_promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    # The cases can fail: with the backlog threshold raised past the series, the firing case fails.
    changed = copy.deepcopy(the_rule())
    changed["spec"]["groups"][0]["rules"][0]["expr"] = "max(dropgate_scan_backlog_oldest_seconds) > 86400"
    write_rules(tmp_path, changed)
    done = run_promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert done.returncode != 0 and "DropgateScanBacklogStale" in done.stdout + done.stderr


def test_every_alert_has_a_severity_and_a_runbook_in_the_docs() -> None:
    runbook = (REPO / "docs" / "monitoring.md").read_text()
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["runbook_url"] == f"docs/monitoring.md#{name.lower()}", name
        assert f"### {name}" in runbook, f"docs/monitoring.md has no runbook section for {name}"


# ---------------------------------------------------------------------------------------------- the dashboard

def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_the_dashboard_is_one_grafana_can_load_from_any_prometheus() -> None:
    board = dashboard()
    assert board["uid"] == "dropgate-overview" and isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= 36, "datasource references as {type, uid} objects"
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels():
        where = f"panel {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip(), where
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where


def test_the_dashboard_shows_what_operators_ask_for() -> None:
    used = {name for panel in panels() for target in panel["targets"] for name in metric_names(target["expr"])}
    for wanted in ("dropgate_uploads_in_flight", "dropgate_http_request_duration_seconds_bucket",
                   "dropgate_scan_backlog_uploads", "dropgate_scan_backlog_oldest_seconds",
                   "dropgate_scan_verdicts_total", "dropgate_dead_letters_recorded_total",
                   "dropgate_expiry_overdue_uploads", "dropgate_expire_uploads_total",
                   "dropgate_clamd_signature_age_seconds", "dropgate_clamd_up"):
        assert wanted in used, wanted


# ---------------------------------------------------------------------------------------------- against /metrics

def test_promql_names_are_read_apart_from_labels_functions_and_keywords() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route!="x{y}", status=~"5.."}'
            '[$__rate_interval]))) > 2 * 86400 and on (function) max without (pod) (b_total offset 1h30m)'
            ' or absent(up{job="a"}) unless c')
    assert metric_names(expr) == {"a_bucket", "b_total", "up", "c"}
    uses = {u.name: u.within for u in metric_uses(expr)}
    assert uses["a_bucket"] == ("histogram_quantile", "sum", "rate") and uses["c"] == ()
    with pytest.raises(ValueError):
        metric_uses("sum(rate(x[5m])")


def every_expression() -> dict[str, str]:
    found = {f"alert {name}": rule["expr"] for name, rule in alerts().items()}
    for panel in panels():
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    return found


def scrape_samples(url: str, token: str | None) -> dict[str, str]:
    """Every sample name a /metrics answer holds -> the type of its family."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{url}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return {sample.name: family.type for family in text_string_to_metric_families(text) for sample in family.samples}


def exercise(functions: dict[str, str]) -> None:
    """Labelled series appear with their first use: one API request, one event (refused as a wrong type)."""
    assert call("GET", f"{functions['presign']}/files").status == 401
    created = ObjectCreated(id=f"monitoring-{uuid.uuid4().hex}", event_name="ObjectCreated:Put",
                            event_source="minio:s3", region="", bucket="not-watched", key="k",
                            time=datetime.now(UTC), size=1)
    headers, body = to_binary(created.to_cloudevent())
    assert call("POST", functions["expire"], data=body, headers={**headers, **as_broker("expire")}).status == 400


def test_every_metric_a_panel_or_a_rule_reads_is_exported(running_functions, stack) -> None:
    exercise(running_functions)
    token = stack.function_env().get("DROPGATE_METRICS_TOKEN")
    exported: dict[str, str] = {}
    for url in running_functions.values():
        exported.update(scrape_samples(url, token))
    problems = []
    for where, expr in every_expression().items():
        for use in metric_uses(expr):
            kind = exported.get(use.name)
            if kind is None:
                problems.append(f"{where}: {use.name} is not on any function's /metrics")
            elif RANGE_FUNCTIONS & set(use.within) and not (kind in ("counter", "histogram")
                                                            and use.name.endswith(COUNTER_SAMPLES)):
                problems.append(f"{where}: rate/increase over {use.name}, a {kind}")
    assert not problems, "\n".join(problems)
    scan = scrape_samples(running_functions["scan"], token)
    assert set(VITALS) - {"dropgate_dead_letters_recorded"} <= set(scan), "scan serves every vital"
    assert "dropgate_dead_letters_recorded_total" in scan
    assert not {"dropgate_clamd_up", "dropgate_scan_backlog_uploads"} & set(
        scrape_samples(running_functions["presign"], token)), "only scan reads the vitals"


@pytest.fixture
def prometheus(running_functions, stack, tmp_path) -> Iterator[str]:
    """Prometheus itself (Debian's, beside promtool), scraping the running stack every second with the rules."""
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package (local-dev/bootstrap.sh)"
    token = stack.function_env().get("DROPGATE_METRICS_TOKEN")
    # One target per function, labelled as the ServiceMonitor's relabeling labels pods (`function`).
    targets = [{"targets": [url.removeprefix("http://")], "labels": {"function": name.replace("_", "-")}}
               for name, url in running_functions.items()]
    job = {"job_name": "dropgate", "scrape_interval": "1s", "static_configs": targets,
           **({"authorization": {"credentials": token}} if token else {})}
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                      "rule_files": [str(write_rules(tmp_path))], "scrape_configs": [job]}))
    url = f"http://127.0.0.1:{free_port()}"
    child = ChildProcess("prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                        f"--web.listen-address={url.removeprefix('http://')}"],
                         log_path=tmp_path / "prometheus.log").start()
    try:
        child.wait_until(lambda: http_ok(f"{url}/-/ready"), timeout=60)
        yield url
    finally:
        child.stop()


def query(prometheus: str, expr: str) -> list[dict]:
    reply = call("GET", f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert reply.status == 200 and reply.json()["status"] == "success", (expr, reply.body)
    return reply.json()["data"]["result"]


def test_a_real_prometheus_scraping_the_stack_fills_every_panel_and_evaluates_every_rule(
        prometheus, running_functions) -> None:
    exercise(running_functions)
    deadline = time.monotonic() + 60
    while not query(prometheus, f"min(count_over_time(up[1m])) >= 5 and count(up == 1) == {len(running_functions)}"):
        assert time.monotonic() < deadline, "Prometheus did not scrape every function five times"
        time.sleep(0.5)
    empty = [f"panel {panel['title']!r} {target['refId']}: {target['expr']}" for panel in panels()
             for target in panel["targets"] if not query(prometheus, target["expr"].replace("$__rate_interval", "1m"))]
    assert not empty, "queries that show nothing on a running stack:\n" + "\n".join(empty)
    reply = call("GET", f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    evaluated = {rule["name"]: rule for group in reply for rule in group["rules"]}
    assert set(evaluated) == set(alerts())
    assert all(rule["health"] == "ok" and not rule.get("lastError") for rule in evaluated.values()), evaluated
    # A healthy stack: its vitals are read and clamd answers.
    for name in ("DropgateVitalsMissing", "DropgateClamdDown"):
        assert evaluated[name]["state"] == "inactive", evaluated[name]
    # The backlog rule follows the database the whole test session shares: other tests leave completed
    # uploads no scan was told of (their storage is unwatched), some of them backdated. Held to the gauge.
    oldest = max(float(sample["value"][1]) for sample in query(prometheus, "dropgate_scan_backlog_oldest_seconds"))
    backlog = evaluated["DropgateScanBacklogStale"]
    assert backlog["state"] == ("pending" if oldest > 1800 else "inactive"), (oldest, backlog)


# ---------------------------------------------------------------------------------------------- the vitals

def vitals_of(collector: vitals.VitalsCollector) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in collector.collect() for sample in family.samples}


def insert_upload(conn: psycopg.Connection, status: str, *, completed_ago: timedelta | None = None,
                  expires_in: timedelta = timedelta(days=1), redriven_ago: timedelta | None = None) -> None:
    now = datetime.now(UTC)
    conn.execute(
        "INSERT INTO uploads (id, owner, bucket, object_key, filename, content_type, declared_size, part_size,"
        " part_count, status, created_at, completed_at, expires_at, last_redrive_at, redrive_attempts)"
        " VALUES (%s, 'monitoring', 'b', %s, 'f.bin', 'application/octet-stream', 1, 8388608, 1, %s, %s, %s, %s,"
        " %s, %s)",
        (uuid.uuid4(), uuid.uuid4().hex, status, now - (completed_ago or timedelta()),
         now - completed_ago if completed_ago else None, now + expires_in,
         now - redriven_ago if redriven_ago else None, 1 if redriven_ago else 0))


def test_the_vitals_are_read_from_the_database_and_clamd(fresh_database_url, clamd_address) -> None:
    apply_migrations(fresh_database_url)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        insert_upload(conn, "pending")
        insert_upload(conn, "pending")
        insert_upload(conn, "uploaded", completed_ago=timedelta(minutes=50))
        insert_upload(conn, "scanning", completed_ago=timedelta(minutes=5), redriven_ago=timedelta(minutes=3))
        insert_upload(conn, "clean", completed_ago=timedelta(days=3), expires_in=-timedelta(hours=2))
        insert_upload(conn, "expired", completed_ago=timedelta(days=40), expires_in=-timedelta(days=9))
    clamd = StreamingClamd(*clamd_address, timeout=10)
    clamd_settings = Settings.from_env(["clamd"], {"DROPGATE_CLAMD_ADDRESS": "{}:{}".format(*clamd_address)}).clamd
    with ConnectionPool(fresh_database_url, min_size=1, max_size=2, kwargs={"row_factory": dict_row}) as pool:
        collector = vitals.VitalsCollector([uploads_source(lambda: pool), dead_letters_source(lambda: pool),
                                            vitals.clamd_source(clamd_settings)], ttl=60)
        seen = vitals_of(collector)
    assert seen[("dropgate_uploads_in_flight", ())] == 2
    assert seen[("dropgate_scan_backlog_uploads", ())] == 2
    assert 50 * 60 <= seen[("dropgate_scan_backlog_oldest_seconds", ())] < 52 * 60
    assert seen[("dropgate_expiry_overdue_uploads", ())] == 1  # the clean one: expired rows are done
    assert seen[("dropgate_reconcile_redriven_last_hour", ())] == 1
    assert seen[("dropgate_dead_letters_recorded_total", ())] == 0
    signatures = clamd.signatures()
    assert seen[("dropgate_clamd_up", ())] == 1
    assert seen[("dropgate_clamd_signature_version", ())] == signatures.version
    age = (datetime.now(UTC) - signatures.built_at).total_seconds()
    assert abs(seen[("dropgate_clamd_signature_age_seconds", ())] - age) < 60
    assert {labels: v for (name, labels), v in seen.items() if name == "dropgate_vitals_up"} == {
        (("source", "uploads"),): 1, (("source", "dead_letters"),): 1, (("source", "clamd"),): 1}


def test_vitals_from_sources_that_are_down_are_missing_never_zero() -> None:
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=1"
    with ConnectionPool(unreachable, min_size=0, max_size=1, timeout=2, open=True) as pool:
        now = [0.0]
        collector = vitals.VitalsCollector([uploads_source(lambda: pool),
                                            vitals.clamd_source(Settings.from_env(["clamd"], {
                                                "DROPGATE_CLAMD_ADDRESS": f"127.0.0.1:{free_port()}"}).clamd)],
                                           ttl=15, clock=lambda: now[0])
        seen = vitals_of(collector)
        assert seen[("dropgate_vitals_up", (("source", "uploads"),))] == 0
        assert ("dropgate_scan_backlog_uploads", ()) not in seen, "an unread backlog is unknown, not 0"
        assert seen[("dropgate_clamd_up", ())] == 0 and seen[("dropgate_vitals_up", (("source", "clamd"),))] == 1
        assert ("dropgate_clamd_signature_age_seconds", ()) not in seen
        started = time.monotonic()
        vitals_of(collector)  # within the ttl: the cached read, no second wait for the database
        assert time.monotonic() - started < 1


def test_clamd_version_replies_give_the_version_and_the_build_time() -> None:
    from shared.platform.clamd import Signatures

    read = Signatures.from_version_reply("ClamAV 1.4.6/27490/Tue Dec  1 09:21:02 2026")
    assert (read.version, read.built_at) == (27490, datetime(2026, 12, 1, 9, 21, 2, tzinfo=UTC))
    assert Signatures.from_version_reply("ClamAV 1.4.6") == Signatures(None, None)
    assert Signatures.from_version_reply("ClamAV 1.4.6/27490/not a date") == Signatures(27490, None)


# ---------------------------------------------------------------------------------------------- dead letters

def test_the_dead_letter_job_logs_and_records_each_event_once(fresh_database_url, tmp_path) -> None:
    apply_migrations(fresh_database_url)
    event = {"specversion": "1.0", "id": "dl-1", "type": "dev.dropgate.scan.clean", "source": "/t",
             "knativeerrorcode": "500", "data": {"upload_id": "u"}}
    path = tmp_path / "event"
    path.write_text(json.dumps(event))
    env = {**os.environ, "DATABASE_URL": fresh_database_url}
    for _ in range(2):  # a Job retried (or the event dead-lettered twice) counts once
        done = subprocess.run([sys.executable, "-m", "shared.platform.dead_letters", str(path)], env=env,
                              capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
        assert done.returncode == 0, done.stderr
        logged = json.loads(done.stdout.strip().splitlines()[-1])
        assert logged["event"] == event and logged["level"] == "ERROR"
    with ConnectionPool(fresh_database_url, min_size=1, max_size=1, kwargs={"row_factory": dict_row}) as pool:
        assert dead_letters_source(lambda: pool).read() == {"dropgate_dead_letters_recorded": 1}
        with pool.connection() as conn:
            row = conn.execute("SELECT outcome FROM processed_events WHERE event_id = 'dl-1'").fetchone()
        assert row["outcome"] == "dead-lettered:500"
    done = subprocess.run([sys.executable, "-m", "shared.platform.dead_letters", str(path)],
                          env={**env, "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/x"},
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode != 0 and '"dl-1"' in done.stdout, "logged even when it cannot be recorded; the Job fails"
