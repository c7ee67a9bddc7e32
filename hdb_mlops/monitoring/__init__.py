"""Chapter 6: monitoring and observability.

Drift against the training profile, the prediction log and live-accuracy feedback, the
Alertmanager webhook that retrains and promotes, the traffic simulator, and a runner for a
local Prometheus and Alertmanager. Sits above :mod:`hdb_mlops.serving`: it extends the service
through its observer hook and never changes the prediction path's code.
"""
