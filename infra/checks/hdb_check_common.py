"""Helpers shared by the project's checkov checks (this module registers no check).

checkov's CloudFormation parser keeps intrinsic functions as one-key dicts (``{"Ref": ...}``,
``{"Fn::If": [condition, then, else]}``) and adds ``__startline__``-style keys to every dict.
"""

from __future__ import annotations

from typing import Any

NO_VALUE = {"Ref": "AWS::NoValue"}


def clean(value: Any) -> Any:
    """``value`` without checkov's ``__file__``/``__startline__``/``__endline__`` keys."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def as_list(value: Any) -> list[Any]:
    """``value`` as a list (a single value becomes a one-item list; None an empty one)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def statements(policy_document: Any) -> list[tuple[dict[str, Any], bool]]:
    """The statements of a policy document, each with whether it hangs on a condition
    (the true branch of an ``Fn::If`` whose false branch is ``AWS::NoValue``)."""
    found: list[tuple[dict[str, Any], bool]] = []
    document = clean(policy_document)
    if not isinstance(document, dict):
        return found
    for item in as_list(document.get("Statement")):
        if isinstance(item, dict) and "Fn::If" in item:
            branches = as_list(item["Fn::If"])[1:]
            for branch in branches:
                if isinstance(branch, dict) and branch != NO_VALUE:
                    found.append((branch, True))
        elif isinstance(item, dict):
            found.append((item, False))
    return found


def is_everyone(principal: Any) -> bool:
    """Whether a statement's principal is everyone (``"*"`` or ``{"AWS": "*"}``)."""
    if principal == "*":
        return True
    return isinstance(principal, dict) and "*" in as_list(principal.get("AWS"))


def covers_all_s3_actions(action: Any) -> bool:
    """Whether a statement's actions include every S3 action (``s3:*`` or ``*``)."""
    return any(str(a).lower() in ("s3:*", "*") for a in as_list(action))


def condition_value(condition: Any, operators: tuple[str, ...], key: str) -> Any:
    """The value of condition ``key`` (case-insensitive) under any of ``operators``."""
    if not isinstance(condition, dict):
        return None
    for operator, block in condition.items():
        if operator in operators and isinstance(block, dict):
            for name, value in block.items():
                if str(name).lower() == key.lower():
                    return value
    return None
