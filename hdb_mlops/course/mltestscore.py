"""hdb-mlops: scan-ignore (patterns, not evidence)

Google's ML Test Score (Breck, Cai, Nielsen, Salib and Sculley, "The ML Test Score: A Rubric
for ML Production Readiness and Technical Debt Reduction", IEEE Big Data 2017), read from a
repository scan.

The rubric has 28 tests, seven in each of four sections: data, model, infrastructure and
monitoring (titles here in the course's own short wording). A test done by hand, with the
results documented, earns half a point; a test that runs automatically earns one point. A
section's score is the sum of its seven tests, and the final score is the **lowest** of the
four section scores: one neglected section caps the system.

What the scan can tell: a test counts as **automated** when its evidence sits where it runs
by itself — in tests that CI runs, in notebooks that CI executes, in the CI commands, in alert
rules, or (for checks that the pipeline's own code performs, such as the promotion gate) in
the package code; as **manual** when the evidence is only in code, notebooks or documents
that someone has to run or read; **none** when nothing is found; and **unknown** for the few
tests a repository cannot show (e.g. whether a feature's cost was weighed), which also score
0 and are listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hdb_mlops.course.scan_checks import MET, ScanContext, notebooks_in_ci

SECTIONS: tuple[str, ...] = ("data", "model", "infrastructure", "monitoring")
AUTOMATED, MANUAL, NONE, UNKNOWN = "automated", "manual", "none", "unknown"
POINTS = {AUTOMATED: 1.0, MANUAL: 0.5, NONE: 0.0, UNKNOWN: 0.0}

_SCHEMA = r"\b(pandera|great_expectations)\b|def validate\w*\(|class \w*Schema\b|\bSCHEMA\b"
_TUNING = r"\boptuna\b|HyperparameterTuner|TuningStep|GridSearchCV|RandomizedSearchCV|hyperopt"
_SLICES = r"metrics_by\(|by_group|MetricFrame|\.by\([\"'](town|flat_type)|groupby\(.*(town|slice)"
_LIVE_ERROR = r"mape|\bape\b|abs\w*_?error|prediction_error"


@dataclass(frozen=True)
class MLTest:
    """One test of the rubric: where automated and manual evidence would be found.

    ``auto`` and ``manual`` are (context, pattern) pairs. Contexts: ``tests`` and
    ``notebooks`` (automated only when CI runs them, manual otherwise), ``ci`` (the commands
    CI runs), ``alerts`` (alert rules), ``code``, ``iac``, ``docs``, ``config``.
    """

    id: str
    section: str
    title: str
    auto: tuple[tuple[str, str], ...] = ()
    manual: tuple[tuple[str, str], ...] = ()
    #: False for a test a repository cannot show: "unknown" rather than "none" when absent
    visible: bool = True


def _t(section: str, n: int, title: str, auto=(), manual=(), visible: bool = True) -> MLTest:
    return MLTest(f"{section}.{n}", section, title, tuple(auto), tuple(manual), visible)


TESTS: tuple[MLTest, ...] = (
    _t("data", 1, "Feature expectations are written down in a schema",
       [("tests", r"(from|import) .*\b(validate|validation|schema)\b|quarantin")],
       [("code", _SCHEMA)]),
    _t("data", 2, "Every feature is shown to help",
       [("tests", r"feature_importances_|permutation_importance|ablation")],
       [("code", r"feature_importances_|permutation_importance|\bshap\b|ablation"),
        ("notebooks", r"feature_importances_|permutation_importance|\bshap\b|ablation")]),
    _t("data", 3, "No feature costs more than it brings", [],
       [("docs", r"feature cost|cost of (a|each) feature")], visible=False),
    _t("data", 4, "Features meet the rules on which data may be used", [],
       [("docs", r"personal data|PDPA|\bPII\b|sensitive data")], visible=False),
    _t("data", 5, "The data pipeline has privacy controls",
       [("ci", r"checkov|cfn-lint|tfsec|cfn_nag")],
       [("iac", r"BucketEncryption|KmsKeyId|PublicAccessBlock|aws:SecureTransport")]),
    _t("data", 6, "A new feature can be added quickly",
       [("tests", r"FeatureSpec|def test_\w*feature")],
       [("code", r"class FeatureSpec|def (make|build)_features|feature_spec")], visible=False),
    _t("data", 7, "The code that makes the features is tested",
       [("tests", r"features?\b.*import|import .*features|def test_\w*feature")],
       [("code", r"def (make|build|add)_?features|def features\(")]),
    _t("model", 1, "The model's specification is reviewed and versioned",
       [("ci", r"merge_request|pull_request")],
       [("config", r"CODEOWNERS|merge_request_templates|PULL_REQUEST_TEMPLATE"),
        ("code", r"feature_spec\.json|params\(\)")]),
    _t("model", 2, "Offline metrics track the online outcome",
       [("alerts", _LIVE_ERROR)], [("code", r"/feedback|ground[_ ]truth|actual_price|live_mape")]),
    _t("model", 3, "Hyperparameters are tuned",
       [("tests", _TUNING), ("notebooks", _TUNING)], [("code", _TUNING)]),
    _t("model", 4, "The cost of a stale model is known",
       [("tests", r"frozen_vs_retrained|staleness|\bdecay|rolling\("),
        ("notebooks", r"frozen_vs_retrained|rolling\(")],
       [("code", r"frozen_vs_retrained|staleness|def rolling\(")]),
    _t("model", 5, "A simpler model is not better",
       [("tests", r"baseline|median_ppsm|DummyRegressor"),
        ("notebooks", r"baseline|median_ppsm|DummyRegressor")],
       [("code", r"baseline|median_ppsm|DummyRegressor")]),
    _t("model", 6, "Quality holds on the important slices",
       [("tests", _SLICES), ("notebooks", _SLICES)], [("code", _SLICES)]),
    _t("model", 7, "The model is checked for fairness across groups",
       [("tests", r"fairlearn|MetricFrame|fairness|disparit")],
       [("code", r"fairlearn|MetricFrame|fairness"), ("notebooks", r"fairlearn|fairness")]),
    _t("infrastructure", 1, "Training is reproducible",
       [("tests", r"model_sha256|same.*hash|reproduc|deterministic")],
       [("code", r"model_sha256|booster_sha256|random_state\s*=|DEFAULT_SEED")]),
    _t("infrastructure", 2, "The model's code is unit-tested",
       [("tests", r"make_model|\.fit\(|import .*model")], [("code", r"\.fit\(")]),
    _t("infrastructure", 3, "The whole pipeline is integration-tested",
       [("ci", r"pipeline run|papermill|--nbval|integration"),
        ("tests", r"pipeline|end[-_ ]to[-_ ]end|papermill")],
       [("code", r"papermill|sagemaker\.(mlops\.)?workflow|\bDAG\(")]),
    _t("infrastructure", 4, "A model's quality is checked before it serves",
       [("code", r"def promote\b|ConditionStep|ModelApprovalStatus|\bgate\b"),
        ("ci", r"evaluate|gate|promote")],
       [("notebooks", r"evaluate|holdout")]),
    _t("infrastructure", 5, "A single prediction can be inspected",
       [("tests", r"explain|\bshap\b|predict_with_interval|/model\b")],
       [("code", r"explain|\bshap\b|predict_with_interval|[\"']/model[\"']")]),
    _t("infrastructure", 6, "New models are canaried before they serve everyone",
       [("code", r"canary|shadow|traffic[-_ ]?(split|shift)|InitialVariantWeight"),
        ("iac", r"canary|InitialVariantWeight|TrafficRoutingConfig")],
       [("docs", r"canary|shadow deployment|a/b test")]),
    _t("infrastructure", 7, "A serving model can be rolled back",
       [("code", r"auto_?rollback|AutoRollbackConfiguration"), ("iac", r"AutoRollback")],
       [("code", r"rollback|set_registered_model_alias|previous champion"),
        ("docs", r"roll ?back")]),
    _t("monitoring", 1, "Dependency changes raise a notification",
       [("config", r"dependabot|renovate"), ("ci", r"pip-audit|safety check|osv-scanner")],
       [("config", r"==\d")]),
    _t("monitoring", 2, "Live inputs hold the data invariants",
       [("alerts", r"invalid|refused|reject|4\d\d|validation|quarantin")],
       [("code", r"RequestValidationError|BaseModel|request_schema")]),
    _t("monitoring", 3, "Training and serving compute the same features",
       [("tests", r"skew|serv\w*.{0,40}train|train\w*.{0,40}serv"),
        ("alerts", r"drift|\bpsi\b")],
       [("code", r"population stability|\bpsi\b|ks_2samp|FeatureSpec")]),
    _t("monitoring", 4, "A stale model is noticed",
       [("alerts", r"model_age|age_seconds|stale|last_train|model_created")],
       [("docs", r"retrain\w*.{0,60}(month|week|quarter|schedule)")]),
    _t("monitoring", 5, "Numerical problems (NaN, infinity) are caught",
       [("tests", r"\bnan\b|isfinite|np\.inf"), ("alerts", r"\bnan\b|non_finite")],
       [("code", r"isfinite|isnan")]),
    _t("monitoring", 6, "Serving performance has not regressed",
       [("alerts", r"latency|duration|histogram_quantile"), ("ci", r"bench")],
       [("code", r"perf_counter|latency"), ("docs", r"\bp99\b")]),
    _t("monitoring", 7, "Live prediction quality has not regressed",
       [("alerts", _LIVE_ERROR)], [("code", r"/feedback|live_mape|rolling_mape|ground[_ ]truth")]),
)  # fmt: skip
_TAGS = {
    "code": ("python",),
    "iac": ("iac",),
    "docs": ("doc", "readme"),
    "config": ("config",),
    "alerts": ("alerts",),
    "ci": ("ci",),
    "tests": ("test",),
    "notebooks": ("notebook",),
}


@dataclass
class TestResult:
    """One test's status (automated, manual, none, unknown), points and evidence."""

    __test__ = False  # not a pytest test class

    id: str
    section: str
    title: str
    status: str
    points: float
    evidence: list[str] = field(default_factory=list)
    details: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(vars(self))


@dataclass
class MLTestScore:
    """The 28 results, the four section scores and the final score (their minimum)."""

    tests: list[TestResult]

    @property
    def sections(self) -> dict[str, float]:
        """Section -> sum of its seven tests' points."""
        return {s: sum(t.points for t in self.tests if t.section == s) for s in SECTIONS}

    @property
    def final(self) -> float:
        """The lowest section score."""
        return min(self.sections.values())

    @property
    def meaning(self) -> str:
        """What the final score says, in the paper's bands (our wording)."""
        return interpret(self.final)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"sections": self.sections, "final": self.final, "meaning": self.meaning,
                "tests": [t.to_dict() for t in self.tests]}  # fmt: skip


def interpret(final: float) -> str:
    """The band of a final ML Test Score (Breck et al. 2017), in our own words."""
    if final <= 0:
        return "0: a research project more than a production system"
    if final <= 1:
        return "(0, 1]: some tests, but expect serious gaps in reliability"
    if final <= 2:
        return "(1, 2]: a first pass at production readiness; more work is needed"
    if final <= 3:
        return "(2, 3]: reasonably tested; more of it could be automated"
    if final <= 5:
        return "(3, 5]: strong automated testing and monitoring, fit for critical systems"
    return "> 5: exceptional automated testing and monitoring"


def _search(ctx: ScanContext, context: str, pattern: str) -> list[str]:
    regex = re.compile(pattern, re.I)
    return [line.loc for line in ctx.index.grep(regex, *_TAGS[context], limit=3)]


def evaluate(test: MLTest, ctx: ScanContext, ci_tests: bool, ci_notebooks: bool) -> TestResult:
    """One test's status from the scan (see the module docstring for the rules)."""
    runs_by_itself = {"tests": ci_tests, "notebooks": ci_notebooks}
    auto, demoted = [], []
    for context, pattern in test.auto:
        hits = _search(ctx, context, pattern)
        (auto if runs_by_itself.get(context, True) else demoted).extend(hits)
    if auto:
        return TestResult(test.id, test.section, test.title, AUTOMATED, 1.0, auto[:4],
                          "runs automatically")  # fmt: skip
    manual = demoted + [loc for c, p in test.manual for loc in _search(ctx, c, p)]
    if manual:
        why = "found, but CI does not run it" if demoted else "done by hand (or not run by CI)"
        return TestResult(test.id, test.section, test.title, MANUAL, 0.5, manual[:4], why)
    if not test.visible:
        return TestResult(test.id, test.section, test.title, UNKNOWN, 0.0, [],
                          "a repository cannot show this: ask the team")  # fmt: skip
    return TestResult(test.id, test.section, test.title, NONE, 0.0, [], "no evidence found")


def ml_test_score(ctx: ScanContext) -> MLTestScore:
    """The ML Test Score of a scanned repository."""
    ci_tests = bool(ctx.ci_runs_tests)
    ci_notebooks = bool(ctx.index.tagged("notebook")) and notebooks_in_ci(ctx).verdict == MET
    return MLTestScore([evaluate(t, ctx, ci_tests, ci_notebooks) for t in TESTS])
