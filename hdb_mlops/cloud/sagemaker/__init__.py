"""Chapter 5C-5F: the SageMaker 3.x build pipeline.

- :mod:`~hdb_mlops.cloud.sagemaker.sdk`: the SDK imported safely (region, telemetry off,
  no role look-ups), behind functions;
- :mod:`~hdb_mlops.cloud.sagemaker.definition`: the pipeline Prepare -> Train (or Tune) ->
  Evaluate -> CheckMape -> Register | Fail, built with zero AWS calls;
- :mod:`~hdb_mlops.cloud.sagemaker.entrypoints`: the scripts the pipeline's containers run,
  under SageMaker's directory and environment contract;
- :mod:`~hdb_mlops.cloud.sagemaker.local`: those same scripts run here as subprocesses, with
  ``/opt/ml`` mapped into a run folder;
- :mod:`~hdb_mlops.cloud.sagemaker.registry`: the model package registry and its approval;
- :mod:`~hdb_mlops.cloud.sagemaker.deploy`: serving a trained artifact (in process, or as
  an endpoint on AWS);
- :mod:`~hdb_mlops.cloud.sagemaker.checks`: the tests a release runs on one artifact
  (validation, A/B against the incumbent, latency).

Nothing here imports the SDK, boto3 or moto at import time.
"""
