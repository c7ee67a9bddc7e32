"""hdb-mlops: scan-ignore (patterns, not evidence)

The repository scan's rules: one per evidence statement of the maturity framework
(``resources/maturity.yaml``) that a repository can show, keyed by the statement's id. The
patterns are heuristics written to be read: a ``met`` says where to look, and a reader should
look. Statements without a rule here are undecided by construction (the questionnaire asks
them). The building blocks and the rules that need more than a pattern are in
:mod:`hdb_mlops.course.scan_checks`.
"""

from __future__ import annotations

from hdb_mlops.course.scan_checks import (
    ANYCODE,
    CI,
    CODE,
    CONFIG,
    DOCS,
    EVERYWHERE,
    IAC,
    TESTS,
    UNDECIDED,
    Rule,
    alert_rules_tested,
    alerts_routed,
    ci_configured,
    coverage_measured,
    data_loaded_by_code,
    data_out_of_git,
    dependencies_listed,
    dependencies_pinned,
    iam_least_privilege,
    no_secrets,
    notebooks_in_ci,
    readme_setup,
    spec,
    tests_exist,
    tests_in_ci,
    tests_runnable,
    train_parameterised,
)

CODE_CONF = (*CODE, "config")
CI_ALERTS = (*CI, "alerts")
DASHBOARDS = ("dashboard", *IAC)
WEBHOOKS = ("alertmanager", *IAC)
CI_IAC_CONF = (*CI, *IAC, "config")
CI_IAC_CODE_CONF = (*CI_IAC_CONF, *CODE)

_DEPLOY = (
    r"\b(deploy\w*|cdk deploy|terraform apply|aws cloudformation|kubectl apply|"
    r"helm (upgrade|install))\b"
)
_SCHEDULE = (r"^\s*schedule:|\bcron\b|CI_PIPELINE_SOURCE\W+schedule|ScheduleExpression|"
             r"schedule_expression|AWS::Scheduler::|schedule_interval")  # fmt: skip
_APP = r"FastAPI\(|Flask\(|@app\.(get|post|route)|APIRouter\(|bentoml|/invocations"
_AUTOSCALE = r"ScalableTarget|ScalingPolicy|aws_appautoscaling|HorizontalPodAutoscaler|autoscal"
_BUCKET = r"AWS::S3::Bucket\b|aws_s3_bucket\b|s3\.Bucket\("
_TUNING = (r"\boptuna\b|hyperopt|HyperparameterTuner|TuningStep|GridSearchCV|RandomizedSearchCV|"
           r"ray\.tune|keras_tuner|BayesSearchCV")  # fmt: skip
_SLICES = r"metrics_by\(|by_group|MetricFrame|groupby\(.*(town|flat_type|segment|slice|group)"
_LIVE_ACCURACY = r"/feedback|def \w*feedback|ground[_ ]truth|record_actual|live_mape|rolling_mape"

# The table reads best as a table: one statement, its parts and its verdict when absent.
# fmt: off
RULES: dict[str, Rule] = {
    "env_cicd.b1": dependencies_listed,
    "env_cicd.b2": readme_setup,
    "env_cicd.i1": dependencies_pinned,
    "env_cicd.i2": ci_configured,
    "env_cicd.i3": spec(("a deploy command in CI", _DEPLOY, CI)),
    "env_cicd.i4": spec(("a container or dev-container definition", r".", ("docker",))),
    "env_cicd.i5": spec(("infrastructure code", r"\S", IAC)),
    "env_cicd.a1": spec(("a training step in CI", r"\btrain\w*\b|pipeline run", CI),
                        ("a deploy step in CI", _DEPLOY, CI)),
    "env_cicd.a2": spec(("a UAT or staging environment", r"\b(uat|staging)\b", CI + IAC + CONFIG),
                        ("a prod environment", r"\bprod(uction)?\b", CI + IAC + CONFIG),
                        absent=UNDECIDED),
    "env_cicd.a3": spec(("autoscaling", _AUTOSCALE, IAC + CONFIG),
                        ("health checks or restart policies",
                         r"healthcheck|HealthCheck|restart:\s*(always|unless-stopped|on-failure)",
                         IAC + CONFIG), absent=UNDECIDED),
    "security.b1": no_secrets,
    "security.b2": spec(("encryption at rest", r"BucketEncryption|ServerSideEncryption|"
                         r"SSEAlgorithm|server_side_encryption|KmsKeyId|kms_key|StorageEncrypted|"
                         r"encrypted\s*=\s*true", IAC), absent="iac",
                        missing="no encryption settings in infrastructure code (S3 encrypts new "
                                "objects by default since 2023; check the account)"),
    "security.b3": spec(("IAM roles", r"AWS::IAM::Role|aws_iam_role\b|iam\.Role\(", IAC),
                        absent=UNDECIDED),
    "security.i1": iam_least_privilege,
    "security.i2": spec(("a public access block", r"PublicAccessBlockConfiguration|BlockPublicAcls|"
                         r"block_public_acls|BlockPublicAccess", IAC),
                        ("a TLS-only bucket policy", r"aws:SecureTransport", IAC), absent="iac"),
    "security.i3": spec(("a KMS key", r"AWS::KMS::Key|aws_kms_key\b|kms\.Key\(", IAC),
                        ("key rotation", r"EnableKeyRotation\W+true|enable_key_rotation\W+true|"
                         r"enable_key_rotation=True", IAC), absent="iac"),
    "security.i4": spec(("a secrets store or CI variables", r"secretsmanager|AWS::SecretsManager|"
                         r"ssm\W+GetParameter|get_parameter\(|\$\{\{\s*secrets\.|CI_JOB_TOKEN|"
                         r"os\.environ.*(TOKEN|SECRET|PASSWORD)", EVERYWHERE), absent=UNDECIDED),
    "security.a1": spec(("VPC endpoints", r"AWS::EC2::VPCEndpoint|aws_vpc_endpoint\b|"
                         r"InterfaceVpcEndpoint|aws:sourceVpce", IAC), absent="iac"),
    "security.a2": spec(("network isolation", r"EnableNetworkIsolation\W+true|"
                         r"enable_network_isolation\W+(true|True)", IAC + CODE), absent="iac"),
    "security.a3": spec(("an infrastructure security check in CI",
                         r"checkov|cfn-lint|cfn_nag|tfsec|terrascan|trivy (config|fs)|kics|"
                         r"cfn-guard", (*CI, "ci_tests"))),
    "storage.b1": data_out_of_git,
    "storage.b2": spec(("a raw-data layer", r"data/raw|\braw_dir\b|RAW_DIR|raw layer", CODE),
                       absent=UNDECIDED),
    "storage.i1": spec(("parquet files", r"to_parquet|read_parquet|pyarrow\.parquet", CODE),
                       ("validated/processed layers", r"\b(interim|processed|validated|curated)\b",
                        CODE)),
    "storage.i2": spec(("a data version recorded with the model", r"data_hash|dataset_hash|"
                        r"data_version|mlflow\.data|log_input\(|dvc\.yaml|lakefs",
                        ANYCODE + CONFIG)),
    "storage.i3": spec(("bucket versioning", r"VersioningConfiguration|aws_s3_bucket_versioning|"
                        r"versioned=True|versioning\s*\{", IAC),
                       ("lifecycle rules", r"LifecycleConfiguration|lifecycle_rule|"
                        r"aws_s3_bucket_lifecycle|lifecycle_rules=", IAC), absent="iac"),
    "storage.a1": spec(("a feature store", r"\bfeast\b|FeatureGroup|feature_store|FeatureStore",
                        ANYCODE + IAC), absent=UNDECIDED),
    "storage.a2": spec(("the code version recorded", r"git_commit|MLFLOW_GIT_COMMIT|"
                        r"source\.git\.commit|sagemaker\.lineage", CODE),
                       ("the data version recorded", r"data_hash|dataset_hash|data_version", CODE),
                       absent=UNDECIDED),
    "storage.a3": spec(("written retention rules", r"retention|PDPA|personal data", DOCS),
                       ("enforced expiry", r"ExpirationInDays|expiration\s*\{|expiration_days",
                        IAC), absent=UNDECIDED),
    "data_pipeline.b1": data_loaded_by_code,
    # a health check that fetches 127.0.0.1/health is not a download
    "data_pipeline.b2": spec(("download code", r"^(?!.*(127\.0\.0\.1|localhost|/health|/ready))"
                              r".*(requests\.(get|Session)|urlopen|urlretrieve|httpx\.(get|Client)|"
                              r"download_file\(|get_object\(|aws s3 (cp|sync)|"
                              r"\b(wget|curl)\b.*https?://)", CODE_CONF)),
    "data_pipeline.i1": spec(("schema validation", r"\b(pandera|great_expectations|frictionless|"
                              r"deepchecks|tensorflow_data_validation)\b|def validate\w*\(|"
                              r"class \w*Schema\b|\bSCHEMA\b", CODE)),
    "data_pipeline.i2": spec(("a quarantine for bad rows", r"quarantin", CODE)),
    "data_pipeline.i3": spec(("one command for the pipeline", r"^\[project\.scripts\]|"
                              r"console_scripts|^(pipeline|data|ingest|etl|all)\s*:|^stages:|DAG\(|"
                              r"@flow\b|papermill", CODE_CONF)),
    "data_pipeline.a1": spec(("a schedule", _SCHEDULE, CI + IAC + CODE_CONF),
                             absent=UNDECIDED,
                             missing="no schedule in the repository (GitLab and GitHub schedules "
                                     "may be set in the web UI)"),
    "data_pipeline.a2": spec(("data-quality alerts", r"fresh|stale|rows|volume|missing|schema|"
                              r"quarantin|ingest", ("alerts",)), absent=UNDECIDED),
    "data_pipeline.a3": spec(("failure notifications", r"on_failure|if: failure\(\)|"
                              r"notify|slack|email", CI_ALERTS), absent=UNDECIDED),
    "orchestration.b1": spec(("training code", r"\.fit\(|def train\b", CODE),
                             missing="no training code outside notebooks"),
    "orchestration.b2": spec(("a saved model", r"joblib\.dump|pickle\.dump|save_model|log_model|"
                              r"torch\.save|save_bundle|skops", ANYCODE)),
    "orchestration.i1": spec(("a pipeline definition", r"sagemaker\.(mlops\.)?workflow|"
                              r"\bkfp\b|@dsl\.pipeline|\bairflow\b|\bDAG\(|papermill|"
                              r"execute_notebook|\bprefect\b|\bdagster\b|\bmetaflow\b|\bzenml\b|"
                              r"\bkedro\b", CODE_CONF)),
    "orchestration.i2": spec(("a web API", _APP, CODE),
                             ("a health-check route", r"[\"']/(health|healthz|ping|ready)\b",
                              CODE)),
    "orchestration.i3": spec(("an approval or promotion step", r"ModelApprovalStatus|"
                              r"approval_status|when:\s*manual|required_reviewers|"
                              r"set_registered_model_alias|transition_model_version_stage|"
                              r"def promote\b", CODE + CI + IAC)),
    "orchestration.a1": spec(("an automatic trigger", _SCHEDULE + r"|webhook|EventPattern",
                              CI + IAC + CODE_CONF), absent=UNDECIDED),
    "orchestration.a2": spec(("a gradual roll-out", r"canary|blue[-_/ ]?green|\bshadow\b|"
                              r"traffic[-_ ]?(split|shift|routing)|InitialVariantWeight",
                              CODE + IAC + CI),
                             ("an automatic rollback", r"auto_?rollback|AutoRollbackConfiguration|"
                              r"rollback", CODE + IAC + CI), absent=UNDECIDED),
    "testing.b1": tests_exist,
    "testing.b2": tests_runnable,
    "testing.i1": tests_in_ci,
    "testing.i2": spec(("tests of the data checks",
                        r"(from|import) .*\b(validate|validation|schema)\b|"
                        r"quarantin|expectation_suite|pandera", TESTS)),
    "testing.i3": coverage_measured,
    "testing.i4": notebooks_in_ci,
    "testing.a1": spec(("model quality tests", r"\bgate\b|promot|baseline|threshold|champion|"
                        r"assert .*(mape|rmse|mae|accuracy|auc|r2)", TESTS)),
    "testing.a2": spec(("generated-input tests", r"\bhypothesis\b|schemathesis|@given\b|atheris",
                        TESTS)),
    "testing.a3": spec(("tests of alert rules or templates", r"promtool|test rules|checkov|"
                        r"cfn-lint|cfn_lint|tflint|terraform validate", TESTS + CI)),
    "monitoring.b1": spec(("a service", _APP, CODE),
                          ("structured (JSON) logs", r"JsonFormatter|jsonlogger|structlog|"
                           r"json\.dumps\(.*(latency|status|path|level)", CODE)),
    "monitoring.b2": spec(("a check of the model's live error",
                           r"mape|\bape\b|abs.*error|accuracy", ("alerts",)), absent=UNDECIDED),
    "monitoring.i1": spec(("exposed metrics", r"prometheus_client|"
                           r"prometheus_fastapi_instrumentator|[\"']/metrics|^scrape_configs:|put_metric_data|statsd",
                           CODE_CONF)),
    "monitoring.i2": spec(("dashboards", r"\"panels\"|AWS::CloudWatch::Dashboard|"
                           r"aws_cloudwatch_dashboard", DASHBOARDS)),
    "monitoring.i3": alerts_routed,
    "monitoring.i4": spec(("drift measures", r"population stability|\bpsi\b|ks_2samp|"
                           r"jensenshannon|wasserstein_distance|ModelMonitor|\bevidently\b|"
                           r"alibi_detect|nannyml|whylogs|data_drift|input_drift", CODE)),
    "monitoring.a1": spec(("live accuracy", _LIVE_ACCURACY, CODE)),
    "monitoring.a2": alert_rules_tested,
    "monitoring.a3": spec(("tracing", r"opentelemetry|aws_xray|xray_recorder|jaeger|zipkin|"
                           r"AWS::XRay|TracingConfig", CODE + IAC), absent=UNDECIDED),
    "optimization.b1": spec(("timings", r"perf_counter|timeit|fit_seconds|train\w*_seconds|"
                             r"elapsed|latency", ANYCODE)),
    "optimization.b2": spec(("instance types in configuration", r"ml\.[a-z0-9]+\.\w*(large|medium|"
                             r"small|micro)|InstanceType|instance_type\s*=", CODE + IAC + CONFIG),
                            absent=UNDECIDED),
    "optimization.i1": spec(("a hyperparameter search", _TUNING, ANYCODE)),
    "optimization.i2": spec(("a benchmark with a latency budget", r"\bp(95|99)\b.*(ms|budget)|"
                            r"latency budget|locust|\bk6\b|vegeta|\bwrk\b", ANYCODE + DOCS)),
    "optimization.i3": spec(("a cost estimate or budget", r"AWS::Budgets::Budget|"
                             r"aws_budgets_budget|CfnBudget|price_usd|cost estimate|infracost",
                             EVERYWHERE),
                            absent=UNDECIDED),
    "optimization.a1": spec(("autoscaling or serverless inference",
                             _AUTOSCALE + r"|ServerlessConfig|serverless_config|BatchTransform|"
                             r"\bTransformer\(", IAC + CODE),
                            absent=UNDECIDED),
    "optimization.a2": spec(("spot training or right-sizing", r"use_spot_instances|"
                             r"EnableManagedSpotTraining|\bspot\b|right-?siz", IAC + CODE),
                            absent=UNDECIDED),
    "feedback.b1": train_parameterised,
    "feedback.b2": spec(("a written retraining rule", r"retrain\w*.{0,60}(month|week|daily|"
                         r"quarter|schedule|cadence|when)|(monthly|weekly|quarterly) retrain",
                         DOCS),
                        absent=UNDECIDED),
    "feedback.i1": spec(("a champion/challenger gate", r"champion|challenger|ModelApprovalStatus",
                         CODE)),
    "feedback.i2": spec(("a prediction log", r"prediction[_ ]log|log_prediction|"
                         r"predictions\.jsonl", CODE),
                        ("actual outcomes", r"feedback|actual_price|ground[_ ]truth|outcome",
                         CODE)),
    "feedback.i3": spec(("a retraining schedule", _SCHEDULE, CI_IAC_CONF),
                        absent=UNDECIDED),
    "feedback.a1": spec(("an alert webhook", r"webhook_configs|webhook", WEBHOOKS),
                        ("retraining started from it", r"retrain", CODE)),
    "feedback.a2": spec(("automatic promotion", r"champion|def promote\b", CODE),
                        ("a rollback to the previous champion", r"rollback|roll back|"
                         r"previous champion|restore", CODE)),
    "experimentation.b1": spec(("held-out data", r"train_test_split|holdout|cutoff|"
                                r"TimeSeriesSplit|cross_val|KFold|test_size|X_test", ANYCODE),
                               ("metrics", r"mean_absolute_percentage_error|\bmape\b|rmse|"
                                r"r2_score|accuracy_score|mean_absolute_error|roc_auc", ANYCODE)),
    "experimentation.b2": spec(("fixed seeds", r"random_state\s*=\s*\d|seed\s*=\s*\d|"
                                r"random\.seed\(|manual_seed\(|DEFAULT_SEED|default_rng\(\d",
                                ANYCODE)),
    "experimentation.i1": spec(("run tracking", r"mlflow\.(log_|start_run|autolog)|"
                                r"MlflowClient|log_batch\(|wandb\.(init|log)|sagemaker\.experiments|"
                                r"\bneptune\b|comet_ml|clearml|dvclive", ANYCODE)),
    "experimentation.i2": spec(("a model registry", r"register_model|create_model_version|"
                                r"set_registered_model_alias|ModelPackageGroup|"
                                r"transition_model_version_stage", ANYCODE + IAC)),
    "experimentation.i3": spec(("a time-aware split", r"TimeSeriesSplit|cutoff|split_holdout|"
                                r"time[-_ ]?(aware|based)", ANYCODE),
                               ("baselines", r"baseline|DummyRegressor|median_ppsm", ANYCODE)),
    "experimentation.a1": spec(("slices", _SLICES, ANYCODE),
                               ("uncertainty intervals", r"bootstrap|confidence_interval|"
                                r"ci_quantiles|n_boot", ANYCODE)),
    "experimentation.a2": spec(("a model card", r"model[_ -]?card|modelcard",
                                ANYCODE + DOCS)),
    "experimentation.a3": spec(("a model hash", r"model_sha256|model_hash|booster_sha256",
                                ANYCODE),
                               ("fixed seeds", r"random_state\s*=|seed\s*=|DEFAULT_SEED",
                                ANYCODE)),
}
# fmt: on
