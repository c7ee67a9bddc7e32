"""Live: the monitored service (uvicorn, a freshly trained small model), the retraining webhook
(``hdb-mlops retrainer``), and Debian's Prometheus and Alertmanager started by
:class:`hdb_mlops.monitoring.stack.Stack` at speed 30 (1 s scrapes), all on 127.0.0.1 with
free ports.

What a learner relies on: every query of the dashboards and of the rule files returns data
from the live Prometheus; the request counts Prometheus sees are the client's; the service
keeps serving while Prometheus and Alertmanager are stopped and restarted; a model alert
reaches the retrainer through Alertmanager and a service alert does not; ``hdb-mlops monitor
up|status|down`` work from other processes; the service's /metrics passes ``promtool check
metrics``. Skips, naming the install command, where the binaries are missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from hdb_mlops.monitoring import checks, panels, promql
from hdb_mlops.monitoring.stack import Stack, free_port, process_alive

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
SPEED = 30
FAST_XGB = {"n_estimators": 50, "max_depth": 4, "learning_rate": 0.2}
BAD_ROW = {"town": "NOWHERE", "flat_type": "4 ROOM"}  # unknown town, missing fields: 422


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def binaries() -> dict[str, str]:
    try:
        return checks.require_binaries()
    except checks.MissingBinaryError as exc:
        pytest.skip(f"monitoring binaries missing: {exc}")


@pytest.fixture(scope="module")
def tx(tmp_path_factory):
    from hdb_mlops.data import storage

    return storage.prepare("sample", tmp_path_factory.mktemp("data")).transactions()


@pytest.fixture(scope="module")
def bundle(tx, tmp_path_factory) -> Path:
    """A small XGBoost bundle with its training profile (the drift reference)."""
    from hdb_mlops.model import train

    result = train.train(tx, tmp_path_factory.mktemp("models"), params=FAST_XGB, track=False)
    return result.bundle_dir


@pytest.fixture(scope="module")
def sales(tx):
    """Request bodies (the files' spellings) with the actual price of each sale."""
    from hdb_mlops.data import examples

    sample = tx[tx["month"] > tx["month"].max() - 3].sample(400, random_state=5)
    return list(zip(examples.request_records(sample), sample["resale_price"], strict=True))


@pytest.fixture(scope="module")
def service(bundle, tmp_path_factory):
    from hdb_mlops.monitoring.service import create_monitored_app
    from hdb_mlops.serving.server import serve_in_thread

    log_dir = tmp_path_factory.mktemp("predlog")
    app = create_monitored_app(
        bundle, prediction_log=log_dir / "predictions.sqlite", drift_window=200
    )
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def retrainer(tmp_path_factory):
    """``hdb-mlops retrainer`` as a process; a retraining it starts gives up after 2 s."""
    work = tmp_path_factory.mktemp("retrainer")
    port = free_port()
    command = [
        sys.executable, "-m", "hdb_mlops.cli", "retrainer", "--port", str(port),
        "--work-dir", str(work / "retrain"), "--audit-log", str(work / "audit.jsonl"),
        "--timeout", "2", "--log-level", "warning",
    ]  # fmt: skip
    with open(work / "retrainer.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (work / "retrainer.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the retrainer did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(binaries, service, retrainer, tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("monitor")) as running:
        info = running.start(service, retrainer, speed=SPEED)
        promql.wait_for(
            info.prometheus_url, 'min(up{job=~"hdb-api|hdb-retrainer|prometheus"})',
            timeout=60, predicate=lambda f: len(f) == 1 and f["value"].iloc[0] == 1,
        )  # fmt: skip
        yield running, info


class Traffic:
    """A client of the service: predictions (a 422 now and then, a batch now and then) and
    feedback with the actual price for every other one, counted by endpoint and status."""

    def __init__(self, url: str, sales: list):
        self.url, self.sales = url, sales
        self.counts: Counter = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, client: httpx.Client, i: int) -> None:
        record, price = self.sales[i % len(self.sales)]
        calls = [("/predict", record)]
        if i % 10 == 9:
            calls.append(("/predict", {**record, **BAD_ROW}))
        if i % 25 == 0:
            batch = [r for r, _ in self.sales[i % 300 : i % 300 + 5]]
            calls.append(("/predict/batch", {"records": batch}))
        for path, body in calls:
            try:
                response = client.post(path, json=body)
            except httpx.HTTPError as exc:
                with self._lock:
                    self.failures.append(f"{path}: {type(exc).__name__} {exc}")
                continue
            with self._lock:
                self.counts[(path, str(response.status_code))] += 1
            if path == "/predict" and response.status_code == 200 and i % 2 == 0:
                feedback = {"prediction_id": response.json()["prediction_id"],
                            "actual_price": float(price)}  # fmt: skip
                answer = client.post("/feedback", json=feedback)
                with self._lock:
                    self.counts[("/feedback", str(answer.status_code))] += 1
            elif response.status_code >= 500:
                with self._lock:
                    self.failures.append(f"{path}: {response.status_code} {response.text}")

    def run(self, n: int) -> None:
        """Send ``n`` rounds now, as fast as the service answers."""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for i in range(n):
                self.send(client, i)

    def start(self, per_second: float = 25.0) -> Traffic:
        """Keep sending in a background thread until :meth:`stop`."""

        def loop() -> None:
            with httpx.Client(base_url=self.url, timeout=30) as client:
                i = 0
                while not self._stop.is_set():
                    self.send(client, i)
                    i += 1
                    self._stop.wait(1 / per_second)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)


@pytest.fixture
def traffic(service, sales):
    running = Traffic(service, sales).start()
    try:
        yield running
    finally:
        running.stop()


def post_alert(alertmanager_url: str, labels: dict[str, str]) -> None:
    now = datetime.now(UTC)
    alert = {
        "labels": labels,
        "annotations": {"summary": "posted by tests/test_monitor_stack.py"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=5)).isoformat(),
    }
    httpx.post(f"{alertmanager_url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()


def received(retrainer_url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{retrainer_url}/metrics", timeout=5).text
    return {
        s.labels["alertname"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "hdb_alerts_received"
        for s in family.samples
        if s.name == "hdb_alerts_received_total"
    }


@pytest.fixture(scope="module")
def alert_delivered(stack, retrainer):
    """A model alert posted to Alertmanager, and received by the retrainer."""
    _, info = stack
    post_alert(info.alertmanager_url, {"alertname": "HdbFeatureDrift", "category": "model",
                                       "severity": "warning", "feature": "town"})  # fmt: skip
    post_alert(info.alertmanager_url, {"alertname": "HdbHighLatencyP99", "category": "service",
                                       "severity": "warning"})  # fmt: skip
    deadline = time.monotonic() + 30
    while received(retrainer).get("HdbFeatureDrift", 0) < 1:
        assert time.monotonic() < deadline, "the model alert never reached the retrainer"
        time.sleep(0.3)
    time.sleep(3)  # Alertmanager's group_wait (1 s at speed 30) is long over for both
    return received(retrainer)


# ------------------------------------------------------------------------- the expressions


def _strip_comparison(expr: str) -> str:
    """An alert's expression without its threshold: ``A > 0.2`` -> ``A``."""
    return re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+\s*$", "", expr.strip())


def rule_expressions(info) -> list[tuple[str, str]]:
    """(what, expr) for every rendered rule: a recording rule's expression and its name; for
    an alert, each side of its ``and`` without the threshold (an alert's own expression is
    empty while nothing is wrong, which is the point)."""
    out = []
    for path in sorted((info.workdir / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out.append((f"recording rule {rule['record']}", rule["expr"]))
                    out.append((f"recorded series {rule['record']}", rule["record"]))
                    continue
                parts = re.split(r"\band\s+on\s*\([^)]*\)|\band\b", rule["expr"])
                for part in parts:
                    out.append((f"alert {rule['alert']} (threshold left out)",
                                _strip_comparison(part)))  # fmt: skip
    return out


def dashboard_expressions(info) -> list[tuple[str, str]]:
    out = []
    for name in panels.DASHBOARDS:
        for panel in panels.dashboard_panels(panels.load_dashboard(name)):
            for target in panel.targets:
                expr = panels.grafana_expr(
                    target.expr, step=2, range_seconds=120, scrape_seconds=info.scrape_seconds
                )
                out.append((f"{name}: {panel.title} ({target.ref_id})", expr))
    return out


def missing_data(url: str, exprs: list[tuple[str, str]], timeout: float) -> list[str]:
    """The expressions that still have no number after ``timeout`` seconds."""
    pending = dict(exprs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for what, expr in list(pending.items()):
            if promql.has_data(promql.query(url, expr)):
                del pending[what]
        time.sleep(0.5)
    return [f"{what}: {expr}" for what, expr in pending.items()]


def test_every_dashboard_and_rule_expression_returns_data(stack, traffic, alert_delivered):
    _, info = stack
    exprs = dashboard_expressions(info) + rule_expressions(info)
    assert len(exprs) > 40
    missing = missing_data(info.prometheus_url, exprs, timeout=45)
    assert missing == [], "no data from the live Prometheus for:\n" + "\n".join(missing)
    assert traffic.failures == []


def test_the_dashboards_draw_from_prometheus(stack, traffic, alert_delivered, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    _, info = stack
    for name in panels.DASHBOARDS:
        titles = [p.title for p in panels.dashboard_panels(panels.load_dashboard(name))]
        fig = panels.plot_dashboard(
            name, info.prometheus_url, minutes=2, scrape_seconds=info.scrape_seconds
        )
        drawn = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in drawn] == titles
        empty = [ax.get_title() for ax in drawn if any(t.get_text() == "no data" for t in ax.texts)]
        assert empty == [], f"{name}: panels without data: {empty}"
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_alertmanager_sends_model_alerts_to_the_retrainer_only(alert_delivered):
    assert alert_delivered.get("HdbFeatureDrift", 0) >= 1
    assert "HdbHighLatencyP99" not in alert_delivered  # a service alert: default receiver


def test_promql_client_frames_and_errors(stack):
    _, info = stack
    deadline = time.monotonic() + 60  # the first scrapes of a fresh stack
    while True:
        now = time.time()
        frame = promql.query_range(info.prometheus_url, 'up{job="hdb-api"}', now - 10, now, 1)
        if len(frame) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {"job", "instance", "series", "time", "value"} <= set(frame.columns)
    # up is 1 or 0 (a scrape may time out on a busy machine: the framing is what is tested)
    assert len(frame) >= 5 and set(frame["value"]) <= {0.0, 1.0} and (frame["value"] == 1).any()
    assert str(frame["time"].dt.tz) == "UTC"
    scalar = promql.query(info.prometheus_url, "1 + 1")
    assert scalar["value"].tolist() == [2.0]
    with pytest.raises(promql.PromQLError, match=r"bad PromQL expression 'rate\(up\)'"):
        promql.query(info.prometheus_url, "rate(up)")  # a range vector is needed
    active = promql.targets(info.prometheus_url)
    assert set(active["job"]) == {"hdb-api", "hdb-retrainer", "prometheus"}
    assert set(active["health"]) <= {"up", "down", "unknown"} and "up" in set(active["health"])


# ------------------------------------------------------------------------- counts


def service_counts(url: str) -> dict[tuple[str, str], float]:
    """hdb_http_requests_total by (endpoint, status), read from the service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=5).text
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "hdb_http_requests_total":
                counts[(s.labels["endpoint"], s.labels["status"])] += s.value
    return counts


def prometheus_counts(url: str) -> dict[tuple[str, str], float]:
    frame = promql.query(url, 'sum by (endpoint, status) (hdb_http_requests_total{job="hdb-api"})')
    return {(r.endpoint, r.status): r.value for r in frame.itertuples()}


def test_prometheus_counts_exactly_the_requests_the_client_sent(stack, service, sales):
    _, info = stack
    client_paths = ("/predict", "/predict/batch", "/feedback")

    def settled() -> dict:
        """Prometheus' counts once its latest scrape has the service's own counts."""
        deadline = time.monotonic() + 20
        while True:
            own = {k: v for k, v in service_counts(service).items() if k[0] in client_paths}
            seen = {k: v for k, v in prometheus_counts(info.prometheus_url).items() if k in own}
            if seen == own:
                return seen
            assert time.monotonic() < deadline, f"Prometheus {seen} != service {own}"
            time.sleep(0.3)

    before = settled()
    load = Traffic(service, sales)
    load.run(300)
    assert load.failures == []
    assert load.counts[("/predict", "200")] == 300 and load.counts[("/predict", "422")] == 30
    after = settled()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert {k: v for k, v in delta.items() if v} == dict(load.counts)


# ------------------------------------------------------------------------- restarts


def test_the_service_keeps_serving_while_prometheus_and_alertmanager_restart(stack, traffic):
    running, info = stack
    for component in ("prometheus", "alertmanager"):
        served_before = sum(traffic.counts.values())
        assert running.stop_component(component)
        assert not running.status()["components"][component]["running"]
        time.sleep(3)
        restarted_at = time.time()
        running.start_component(component)
        assert running.status()["components"][component]["ready"]
        assert sum(traffic.counts.values()) > served_before + 20  # served while it was down
        # scraping and alerting resume: a fresh scrape of the service, Alertmanager found
        promql.wait_for(
            info.prometheus_url, f'timestamp(up{{job="hdb-api"}} == 1) > {restarted_at}',
            timeout=30,
        )  # fmt: skip
        promql.wait_for(
            info.prometheus_url, "prometheus_notifications_alertmanagers_discovered == 1",
            timeout=30,
        )  # fmt: skip
    traffic.stop()
    assert traffic.failures == []
    statuses = {status for (_path, status) in traffic.counts}
    assert statuses <= {"200", "202", "422"}, traffic.counts


# ------------------------------------------------------------------------- the service's /metrics


def test_the_service_metrics_pass_promtool_check_metrics(binaries, service, sales):
    Traffic(service, sales).run(20)  # every family has samples
    text = httpx.get(f"{service}/metrics", timeout=5).text
    result = checks.check_metrics(text)
    assert result.ok, result.output


# ------------------------------------------------------------------------- the CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", "monitor", *args],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip


def test_monitor_up_status_down_from_other_processes(binaries, service, retrainer, tmp_path):
    workdir = tmp_path / "monitor"
    try:
        up = run_cli("up", "--api-url", service, "--retrainer-url", retrainer,
                     "--workdir", str(workdir), "--speed", str(SPEED), "--json")  # fmt: skip
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert set(info["pids"]) == {"prometheus", "alertmanager"}
        assert all(process_alive(pid) for pid in info["pids"].values())
        assert (workdir / "logs" / "prometheus.log").is_file()

        status = run_cli("status", "--workdir", str(workdir), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["running"] is True
        assert all(c["ready"] for c in report["components"].values())
        promql.wait_for(
            info["prometheus_url"], 'up{job="hdb-api"} == 1', timeout=30
        )  # it scrapes the service

        again = run_cli("up", "--workdir", str(workdir))
        assert again.returncode == 2
        assert again.stderr.startswith("error: a monitoring stack is already running")
        taken_port = int(info["prometheus_url"].rsplit(":", 1)[1])
        taken = run_cli("up", "--workdir", str(tmp_path / "other"),
                        "--prometheus-port", str(taken_port))  # fmt: skip
        assert taken.returncode == 2 and len(taken.stderr.strip().splitlines()) == 1
        assert f"port {taken_port} on 127.0.0.1 is taken" in taken.stderr

        down = run_cli("down", "--workdir", str(workdir))
        assert down.returncode == 0, down.stderr
        assert "stopped prometheus, alertmanager" in down.stdout
        assert not any(process_alive(pid, str(workdir)) for pid in info["pids"].values())
        after = json.loads(run_cli("status", "--workdir", str(workdir), "--json").stdout)
        assert after["running"] is False
    finally:
        Stack(workdir).stop()
        Stack(tmp_path / "other").stop()
