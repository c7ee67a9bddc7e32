"""The prediction service (chapter 3, "deploying your first model"): FastAPI + uvicorn.

Routes
------
=======================  ======================================================================
``POST /predict``        one flat (a JSON object with the fields of
                         :class:`~hdb_mlops.serving.request_schema.RecordBase`) -> one
                         :class:`~hdb_mlops.serving.request_schema.Prediction`
``POST /predict/batch``  ``{"records": [...]}`` (1..max_batch rows) -> ``{"count",
                         "predictions"}``, in the order of the records
``GET /health``          liveness: 200 while the process serves requests (no model check)
``GET /ready``           readiness: 200 ``{"ready": true, ...}`` once the model is loaded,
                         else 503
``GET /model``           the served model: name, version, sha256, metrics, residual quantiles
``GET /metrics``         Prometheus exposition (one registry per app)
``GET /ping``            SageMaker health check: 200 when the model is loaded, else 503
``POST /invocations``    SageMaker inference: JSON (a row, ``{"records": [...]}``,
                         ``{"instances": [...]}`` or a bare list of rows) or ``text/csv``
=======================  ======================================================================

Single rows and batches are two endpoints (not one polymorphic body) so that each has a plain
OpenAPI schema and validation errors name the field without union noise. A prediction is::

    {"prediction_id": "<uuid4>", "price": 512345.6,
     "interval": {"level": 0.9, "lower": 468000.1, "upper": 561000.2},
     "model": {"name": "xgboost", "version": "3", "sha256": "<12 hex digits>"}}

``interval`` is ``price * exp(q)`` for the (1-level)/2 and (1+level)/2 quantiles of the
residuals log(actual/predicted) on the evaluation's test months, stored in the bundle, exactly as
:meth:`hdb_mlops.model.bundle.Bundle.predict_with_interval`. ``version`` is the registry version,
or null for a bundle served from a directory.

Errors are always JSON, ``{"error": "<kind>", "detail": [{"field", "reason"}], "request_id"}``:
400 malformed JSON/CSV (also duplicate keys, NaN or Infinity, JSON nested too deeply; a
duplicate names the key's path), 404/405 unknown route or method, 406 unsupported ``Accept``,
408 a body that did not arrive within ``body_timeout`` (default 10 s,
``$HDB_MLOPS_BODY_TIMEOUT``; the connection is closed), 413 batch over ``max_batch`` rows (the
reason names the limit) or body over ``max_body_bytes``, 415 wrong ``Content-Type``, 422 invalid
fields (e.g. ``records.0.town``), including a ``remaining_lease`` more than 18 months off the one
implied by ``lease_commence_date`` and ``month``, 503 model not loaded, 500 only for a bug (logged
with its traceback; never for bad input). Request fields are validated exactly as the published
schema says: no string-to-number or boolean-to-integer coercion, no trimming of pattern fields
(see :mod:`hdb_mlops.serving.request_fields`).

CSV on ``/invocations``
-----------------------
Rows in the official column order of the data.gov.sg files. **With or without a header**:
a first row naming ``month`` and ``town`` is a header, and then columns are matched by name
(any order; ``resale_price`` is ignored, so an official file can be sent as it is). Without a
header a row has 9 fields (the pre-2015 order: month .. lease_commence_date), 10 (the 2017+
order without the price: ... remaining_lease) or 11 (the 2017+ order with resale_price, which
is ignored). Blank optional fields are missing values. The response is JSON
(``{"count", "predictions"}``) unless ``Accept: text/csv`` asks for one ``price,lower,upper``
line per row, without a header (what SageMaker batch transform joins back to its input).

Choosing the model
------------------
``create_app(model_ref)`` takes a bundle directory, a registry version number (``3``) or a
registry alias (``champion``); ``None`` means ``$HDB_MLOPS_MODEL``, else ``champion``. At app
creation the reference is resolved and only the feature spec is read (its sha256 checked
against the bundle's metadata, nothing unpickled) to build the request models, whose enums are
the model's categories. The model itself is loaded **once, in the lifespan**, with every file's
sha256 verified by :func:`hdb_mlops.model.bundle.load_bundle` (a registry version is pinned at
creation, so a promotion in between cannot swap it). If loading fails the process **does not
start**: uvicorn exits with status 3 after logging the reason, which names the file
(``model.joblib has sha256 ..., but the bundle records ...``). ``/ready`` is therefore true
whenever the server accepts connections; it is false only for an app used without its
lifespan. The loaded model lives on ``app.state.model`` and endpoints reach it through the
:func:`get_model` dependency (no module globals, so tests can run several apps side by side).

Fast path
---------
The generic path, :func:`hdb_mlops.model.features.transactions_from_records` then
``model.predict``, builds and parses pandas frames for every request. Measured on this
project's 2-core machine (busy with other jobs) for one row and a 50-tree XGBoost model:
about 70 ms median through ``transactions_from_records``, 24 ms with the transactions frame
built directly, and 0.26 ms with the ``xgboost`` engine below (0.45 ms through the public
``inplace_predict`` wrapper). The pandas paths alone would break the 10 ms p99 target, so
the service builds the model's input directly from the validated rows (pydantic has already
checked every format):

* ``xgboost`` engine (an :class:`~hdb_mlops.model.models.XGBoostModel`): the feature matrix is made
  with plain Python/numpy (the same arithmetic as ``parse_fields`` + ``build_features``;
  categories as the codes of the model's own spec; location features from a lookup table
  precomputed from the model's geocodes; the model's address encoding, when it has one, from
  dictionaries of the encoder's tables, see :class:`AddressEncoding`), scored by the booster
  (:class:`BoosterCall`), and the market index is added back from a precomputed array.
* ``frame`` engine (any other model): the normalised transactions frame is built directly
  from the rows and passed to ``model.predict``.
* ``loader`` engine (``fast_path=False`` or ``$HDB_MLOPS_FAST_PATH=0``): the generic path,
  kept as the reference and as a kill switch.

At start-up the chosen engine is compared with the ``loader`` engine on probe rows; if any
prediction differs (relative 1e-9) the service logs a warning and falls back to the next
engine. tests/test_serve.py checks the fast path against ``transactions_from_records`` on a
few hundred sample rows (identical floats), tests/test_serve_schemathesis.py on rows
generated from the OpenAPI schema.

``POST /predict`` is an ``async def`` that scores on the event loop: for a sub-millisecond
model the thread-pool hop of a plain ``def`` costs more than the work (in-process, 0.7 ms per
request against 1.3-1.5 ms as ``def``). ``/predict/batch`` is a plain ``def`` (thread pool),
and ``/invocations`` moves batches of more than ``INLINE_ROWS`` rows to the thread pool.
Responses are serialised by pydantic-core (FastAPI's response-model path, or ``to_json``);
``ORJSONResponse`` is deprecated in this FastAPI and orjson is not installed.

Running it
----------
:func:`serve` (what ``hdb-mlops serve`` calls) runs uvicorn with JSON logs, one log line per
request carrying the request id (``X-Request-ID`` is echoed, or a fresh one is issued) and a
graceful shutdown timeout. With ``workers > 1`` uvicorn starts each worker from the import
string factory ``hdb_mlops.serving.app:app_from_env`` (model from ``$HDB_MLOPS_MODEL``); Prometheus
metrics are then per worker (prefer one worker per container and scale containers).
:func:`serve_in_thread` runs an app in a background thread (notebooks, tests).
"""
