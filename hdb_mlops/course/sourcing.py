"""Chapter 4, "before you begin": vendor-managed, in-house or hybrid; cloud or on-premise;
is the team ready?

The playbook's advice, in short: a vendor-managed platform leaves an agency little room to
experiment, so build a proof of concept in-house first and use what it teaches to write the
tender; weigh cloud against on-premise; check the team's readiness. The tables below and the
rule in :func:`sourcing` are this course's own reading of that advice, not the playbook's text.
"""

from __future__ import annotations

import pandas as pd

#: The three ways to source an ML platform: what each is, when it fits, what to watch.
SOURCING = {
    "vendor-managed": (
        "a vendor builds and runs the platform and often the models too",
        "a standard use case that a product already covers; no team to build or run models",
        "little room to experiment; the agency learns little; hard to leave the vendor",
    ),
    "in-house": (
        "the agency's own team builds the models and runs the platform",
        "the team has data scientists and ML or platform engineers, and the use case needs "
        "experimentation",
        "the team carries the operations, the security reviews and the on-call duty",
    ),
    "hybrid": (
        "the team owns the models; a vendor or a managed service runs the platform, or an "
        "in-house proof of concept is turned into a tender",
        "the team can build models but not run a platform, or must first learn what to ask for",
        "a clear split of duties; tender specifications written from the proof of concept",
    ),
}


def sourcing_table() -> pd.DataFrame:
    """:data:`SOURCING` as a table, one row per option."""
    frame = pd.DataFrame.from_dict(
        SOURCING, orient="index", columns=["what it is", "fits when", "watch out for"]
    )
    frame.index.name = "option"
    return frame


def sourcing(
    *, builds_models: bool, runs_platform: bool, needs_experimentation: bool
) -> tuple[str, str]:
    """The course's rule: ``(option, reason)`` for a team that can (or cannot) build models
    and run a platform, for a use case that does (or does not) need experimentation."""
    if builds_models and runs_platform:
        return "in-house", "the team can both build the models and operate the platform"
    if not builds_models and not needs_experimentation:
        return "vendor-managed", "a standard use case: a product covers it and nobody must tune it"
    if builds_models:
        return "hybrid", "the team builds the models; a managed service or vendor runs the platform"
    return "hybrid", "build a small proof of concept in-house first and write the tender from it"


def hosting_table() -> pd.DataFrame:
    """Cloud or on-premise: the questions that decide it, and what each answer points to."""
    rows = [
        ("may the data leave the agency's data centre?", "classification allows it", "it may not"),
        ("how uneven is the compute?", "bursts (training, tuning)", "steady, predictable"),
        ("who patches and runs the machines?", "the provider, below the services", "the agency"),
        ("which managed ML services are wanted?", "SageMaker, registries, endpoints", "none"),
        ("how is it paid?", "by the hour, as used", "up front, then depreciated"),
    ]
    frame = pd.DataFrame(rows, columns=["question", "points to cloud", "points to on-premise"])
    return frame.set_index("question")


def readiness_table() -> pd.DataFrame:
    """Team readiness: what to have before a Stage 2 set-up, and where the course builds it."""
    rows = [
        ("a tech lead who owns the roadmap", "people", "chapter 8A"),
        ("someone who can read CloudFormation and IAM policies", "people", "this chapter"),
        ("a code repository with CI that runs the tests", "process", "chapters 5C-5F"),
        ("an account (or three: dev, UAT, prod) with a budget alarm", "technology", "this chapter"),
        ("data that is classified, and a rule for where it may go", "process", "chapter 5A"),
    ]
    frame = pd.DataFrame(rows, columns=["have you got", "kind", "in this course"])
    return frame.set_index("have you got")
