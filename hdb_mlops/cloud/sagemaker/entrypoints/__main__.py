"""``python -m hdb_mlops.cloud.sagemaker.entrypoints COMMAND [ARGS]``: the image's entry point.

``train`` runs the training script, ``serve`` the package's service on 0.0.0.0:8080 for the
bundle in ``/opt/ml/model`` (``$SM_MODEL_DIR``), ``prepare`` and ``evaluate`` the
processing scripts (their arguments follow).
"""

from __future__ import annotations

import os
import sys

COMMANDS = ("train", "serve", "prepare", "evaluate")


def main(argv: list[str]) -> None:
    """Dispatch to the script named by ``argv[0]``."""
    if not argv or argv[0] not in COMMANDS:
        print(f"error: expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from hdb_mlops.serving.server import serve

        serve(host="0.0.0.0", port=8080, model_ref=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
        sys.exit(0)
    from hdb_mlops.cloud.sagemaker.entrypoints import contract, evaluate, prepare, train

    if command == "train":
        contract.run_entry(train.main, contract.training_paths().failure_file)
    script = prepare if command == "prepare" else evaluate
    contract.run_entry(lambda _: script.main(rest))


if __name__ == "__main__":
    main(sys.argv[1:])
