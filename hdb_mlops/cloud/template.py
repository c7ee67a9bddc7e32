"""The CloudFormation template as data: loading it (YAML short forms included) and
resolving its intrinsic functions the way CloudFormation would for one stack.

:mod:`hdb_mlops.cloud.fallback` needs both: it sends moto a template adapted to what moto's
CloudFormation can do, and applies the rest with boto3 from the same template and
parameters, so that the values (bucket names, ARNs, policies) cannot drift from the template.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdb_mlops import config

#: The Stage 2 template.
TEMPLATE = config.PROJECT_DIR / "infra" / "stage2.yaml"


class _NoValue:
    """``AWS::NoValue``: the property or list item is dropped."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()
_SUB_RE = re.compile(r"\$\{([^}]+)\}")


def _yaml_loader() -> type:
    """A safe YAML loader that reads CloudFormation's short forms (``!Ref``, ``!Sub``...)
    as their long forms (``{"Ref": ...}``, ``{"Fn::Sub": ...}``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        if suffix == "Ref":
            return {"Ref": value}
        if suffix == "Condition":
            return {"Condition": value}
        if suffix == "GetAtt" and isinstance(value, str):
            return {"Fn::GetAtt": value.split(".", 1)}
        return {f"Fn::{suffix}": value}

    Loader.add_multi_constructor("!", construct)
    return Loader


def load_template(path: Path | str = TEMPLATE) -> dict[str, Any]:
    """The template at ``path`` as a dict, short forms turned into long forms."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    template = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise ValueError(f"{path}: not a CloudFormation template (no Resources)")
    return template


def parameter_values(template: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, str]:
    """Every parameter's value: ``given``, else the template's default.

    Raises ``ValueError`` naming an unknown parameter or one without a value.
    """
    declared = template.get("Parameters") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(
            f"unknown template parameter(s) {', '.join(unknown)}: "
            f"the template has {', '.join(sorted(declared))}"
        )
    values: dict[str, str] = {}
    for name, spec in declared.items():
        if name in given:
            values[name] = str(given[name])
        elif "Default" in spec:
            values[name] = str(spec["Default"])
        else:
            raise ValueError(f"template parameter {name} has no default: give a value")
        _check_parameter(name, spec, values[name])
    return values


def _check_parameter(name: str, spec: Mapping[str, Any], value: str) -> None:
    """Raise ``ValueError`` when ``value`` breaks the parameter's declared constraints (what
    CloudFormation would refuse; moto does not check them)."""
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(a) for a in allowed]:
        choices = ", ".join(str(a) for a in allowed)
        raise ValueError(f"template parameter {name}={value!r}: choose one of {choices}")
    pattern = spec.get("AllowedPattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        hint = spec.get("Description", "")
        raise ValueError(
            f"template parameter {name}={value!r} does not match {pattern}"
            + (f" ({hint})" if hint else "")
        )
    if len(value) < int(spec.get("MinLength", 0)):
        raise ValueError(f"template parameter {name} is shorter than {spec['MinLength']}")


@dataclass
class Resolver:
    """Resolves intrinsic functions for one stack.

    ``physical`` maps logical ids to physical ids (what ``Ref`` of a resource gives) and
    ``attribute(logical_id, name)`` answers ``Fn::GetAtt``; both may be left empty to resolve
    only what depends on parameters and pseudo parameters (a ``KeyError`` otherwise).
    """

    template: Mapping[str, Any]
    parameters: Mapping[str, str]
    pseudo: Mapping[str, str]
    physical: Mapping[str, str] = field(default_factory=dict)
    attribute: Callable[[str, str], Any] | None = None
    zones: list[str] = field(default_factory=list)

    def condition(self, name: str) -> bool:
        """The truth of template condition ``name``."""
        conditions = self.template.get("Conditions") or {}
        if name not in conditions:
            raise KeyError(f"no condition {name} in the template")
        return bool(self.resolve(conditions[name]))

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.physical:
            return self.physical[name]
        raise KeyError(f"cannot resolve Ref {name}")

    def _get_att(self, logical: str, name: str) -> Any:
        if self.attribute is None:
            raise KeyError(f"cannot resolve Fn::GetAtt {logical}.{name}")
        return self.attribute(logical, name)

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        values = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in values:
                return str(values[name])
            if "." in name and name.split(".", 1)[0] not in self.parameters:
                logical, attr = name.split(".", 1)
                return str(self._get_att(logical, attr))
            return str(self._ref(name))

        return _SUB_RE.sub(replace, text)

    def _function(self, name: str, arg: Any) -> Any:
        if name == "Ref":
            return self._ref(arg)
        if name == "Condition":
            return self.condition(arg)
        if name == "Fn::Sub":
            return self._sub(arg)
        if name == "Fn::GetAtt":
            logical, attr = arg.split(".", 1) if isinstance(arg, str) else arg
            return self._get_att(logical, attr)
        if name == "Fn::If":
            chosen = arg[1] if self.condition(arg[0]) else arg[2]
            return self.resolve(chosen)
        if name == "Fn::Equals":
            left, right = (self.resolve(a) for a in arg)
            return str(left) == str(right)
        if name == "Fn::Not":
            return not self.resolve(arg[0])
        if name == "Fn::And":
            return all(self.resolve(a) for a in arg)
        if name == "Fn::Or":
            return any(self.resolve(a) for a in arg)
        if name == "Fn::Join":
            return str(arg[0]).join(str(v) for v in self.resolve(arg[1]))
        if name == "Fn::Select":
            return self.resolve(arg[1])[int(self.resolve(arg[0]))]
        if name == "Fn::FindInMap":
            table, first, second = (self.resolve(a) for a in arg)
            return self.template["Mappings"][table][first][second]
        if name == "Fn::GetAZs":
            if not self.zones:
                raise KeyError("cannot resolve Fn::GetAZs: no availability zones given")
            return list(self.zones)
        raise KeyError(f"unsupported intrinsic function {name}")

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic function resolved and ``AWS::NoValue`` dropped."""
        if isinstance(value, dict):
            if len(value) == 1:
                ((key, arg),) = value.items()
                if key == "Ref" or key == "Condition" or key.startswith("Fn::"):
                    return self._function(key, arg)
            resolved = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not NO_VALUE}
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        return value

    def included(self, logical: str) -> bool:
        """Whether resource ``logical`` exists in this stack (its ``Condition`` holds)."""
        condition = self.template["Resources"][logical].get("Condition")
        return condition is None or self.condition(condition)


def pseudo_parameters(account: str, region: str, stack_name: str) -> dict[str, str]:
    """CloudFormation's pseudo parameters for a stack in ``account`` and ``region``."""
    partition = "aws-cn" if region.startswith("cn-") else "aws"
    if region.startswith("us-gov-"):
        partition = "aws-us-gov"
    return {
        "AWS::AccountId": account,
        "AWS::Region": region,
        "AWS::Partition": partition,
        "AWS::URLSuffix": "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com",
        "AWS::StackName": stack_name,
    }


def resources_of_type(template: Mapping[str, Any], resource_type: str) -> list[str]:
    """The logical ids of the template's resources of ``resource_type``, in template order."""
    return [
        logical
        for logical, resource in template["Resources"].items()
        if resource.get("Type") == resource_type
    ]
