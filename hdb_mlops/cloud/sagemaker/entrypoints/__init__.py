"""The scripts the SageMaker pipeline's containers run: thin wrappers over hdb_mlops.

- :mod:`.prepare` (ProcessingStep "Prepare"), :mod:`.train` (TrainingStep "Train"),
  :mod:`.evaluate` (ProcessingStep "Evaluate"): each runnable as
  ``python -m hdb_mlops.cloud.sagemaker.entrypoints.<name>``;
- ``python -m hdb_mlops.cloud.sagemaker.entrypoints train|serve|prepare|evaluate``: the
  entry point of the project's image. SageMaker starts a training image with the argument
  ``train`` and an inference image with ``serve`` (the package's service on port 8080, with
  ``/ping`` and ``/invocations``, serving the bundle in ``/opt/ml/model``).

:mod:`.contract` holds the directory and environment contract they share.
"""
