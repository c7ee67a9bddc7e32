"""Chapter 6A's tour, the rules: the alerting and recording rules as tables, promtool's unit
tests of them, and a unit test of a single PromQL expression on series written by hand (no
server needed). :mod:`hdb_mlops.monitoring.tour` re-exports these for the notebook.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hdb_mlops.monitoring import checks
from hdb_mlops.monitoring.stack_config import CONFIG_DIR, load_yaml


def _rules(path: Path, kind: str) -> list[dict[str, Any]]:
    return [r for g in load_yaml(path)["groups"] for r in g["rules"] if kind in r]


def alert_rules(path: Path | str = CONFIG_DIR / "rules" / "alerts.yml") -> pd.DataFrame:
    """The alerting rules: alert, expression (one line), for, severity and category."""
    rows = [
        {
            "alert": r["alert"],
            "expression": " ".join(str(r["expr"]).split()),
            "for": r.get("for", "0s"),
            "severity": r["labels"]["severity"],
            "category": r["labels"]["category"],
        }
        for r in _rules(Path(path), "alert")
    ]
    return pd.DataFrame(rows).set_index("alert")


def recording_rules(path: Path | str = CONFIG_DIR / "rules" / "recording.yml") -> pd.DataFrame:
    """The recording rules: the series each one records and its expression (one line); a
    name recorded twice (by model version and overall) gets one row each."""
    rows = [
        {
            "record": r["record"]
            + "".join(f'{{{k}="{v}"}}' for k, v in r.get("labels", {}).items()),
            "expression": " ".join(str(r["expr"]).split()),
        }
        for r in _rules(Path(path), "record")
    ]
    return pd.DataFrame(rows).set_index("record")


def rule_tests(tests_dir: Path | str = CONFIG_DIR / "tests") -> pd.DataFrame:
    """Run ``promtool test rules`` on every test file: per file the test groups, the alert
    and expression checks they hold and promtool's verdict (SUCCESS or FAILED)."""
    files = sorted(Path(tests_dir).glob("*.yml"))
    result = checks.run_rule_tests(files)
    verdicts, current = {}, None
    for line in result.output.splitlines():
        if line.startswith("Unit Testing:"):
            current = Path(line.split(":", 1)[1].strip()).name
        elif current and line.strip() in ("SUCCESS", "FAILED:", "FAILED"):
            verdicts[current] = line.strip().rstrip(":")
    rows = []
    for path in files:
        groups = load_yaml(path).get("tests", [])
        rows.append(
            {
                "file": f"prometheus/tests/{path.name}",
                "test groups": len(groups),
                "alert checks": sum(len(g.get("alert_rule_test", [])) for g in groups),
                "expression checks": sum(len(g.get("promql_expr_test", [])) for g in groups),
                "promtool": verdicts.get(path.name, "FAILED"),
            }
        )
    return pd.DataFrame(rows).set_index("file")


def promql_check(
    expr: str,
    series: Mapping[str, str],
    *,
    eval_time: str,
    expected: float,
    interval: str = "1m",
    tolerance: float = 1e-6,
) -> checks.CheckResult:
    """Whether ``expr`` evaluates to one unlabelled number within ``tolerance`` of
    ``expected`` at ``eval_time`` on the ``series`` (``{series: values}`` in promtool's
    expanding notation, ``'0+10x20'``), by ``promtool test rules``: the unit test of a PromQL
    expression, without a server. The comparison is written in PromQL (``abs(e - x) < bool
    t``) because promtool compares numbers exactly. Raises
    :class:`~hdb_mlops.monitoring.checks.MissingBinaryError` without promtool."""
    checks.find_binary("promtool")
    test = {
        "rule_files": [],
        "evaluation_interval": interval,
        "tests": [
            {
                "interval": interval,
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": f"abs(({expr}) - {expected!r}) < bool {tolerance!r}",
                        "eval_time": eval_time,
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                ],
            }
        ],
    }
    with tempfile.TemporaryDirectory(prefix="hdb-mlops-promql-") as tmp:
        path = Path(tmp) / "expression_test.yml"
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        result = checks.run_tool(
            f"promtool test rules ({expr})", ["promtool", "test", "rules", str(path)]
        )
    return result
