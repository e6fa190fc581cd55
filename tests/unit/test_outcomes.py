"""Outcomes are enums whose values are the strings reports, logs and the CLI's JSON have always carried."""

from __future__ import annotations

import json

from shared.core.deprovisioning import ExportAction
from shared.core.outcomes import ApprovalOutcome, ExportResult, FindingAction
from shared.services.approvals import Answer
from shared.services.reconcile import Finding


def test_outcomes_serialise_as_their_strings() -> None:
    finding = Finding("u-1", FindingAction.ADOPTABLE, "unmarked CN")
    assert json.loads(json.dumps(finding.as_dict()))["action"] == "adoptable"
    assert json.dumps(Answer("u-1", ApprovalOutcome.NOT_HELD).__dict__) == (
        '{"uid": "u-1", "outcome": "not-held", "detail": ""}')
    assert f"{ExportResult.CREATED:<9}|" == "created  |"


def test_every_planned_export_action_but_none_is_a_finding_action() -> None:
    """The reconcile reports a planned export under the same name (FindingAction(plan.action.value))."""
    assert {FindingAction(a.value) for a in ExportAction if a is not ExportAction.NONE} <= set(FindingAction)
