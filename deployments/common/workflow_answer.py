"""What crosses the handle between the ingress and a workflow deployment, and how the leaves'
outputs become the answer (TorchServe's rules). Plain picklable data, no Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from deployments.common.workflow_dag import NodeInput, NodeReport, Payload
from handlers.errors import WorkflowNodeError
from handlers.torchserve.form_fields import decode_form

JSON = "application/json"


@dataclass(frozen=True)
class WorkflowRequest:
    """One ``/wfpredict`` request: its body as received, and its id for the logs."""

    body: bytes
    content_type: str | None = None
    request_id: str = ""


@dataclass(frozen=True)
class WorkflowAnswer:
    """The answer's bytes and media type, every node that ran, and the node error that ended
    the run (then ``body`` is empty)."""

    body: bytes
    content_type: str
    reports: list[NodeReport] = field(default_factory=list)
    error: WorkflowNodeError | None = None


def start_input(request: WorkflowRequest) -> NodeInput:
    """The start node's parameters, as TorchServe builds them: a multipart request's fields by
    name, any other body as ``body``."""
    if (request.content_type or "").lower().startswith("multipart/form-data"):
        fields = decode_form(request.body, request.content_type or "")
        if fields:
            return {name: Payload(data, kind) for name, (data, kind) in fields.items()}
    return {"body": Payload(request.body, request.content_type)}


def compose(outputs: dict[str, Payload]) -> Payload:
    """One leaf: its output as it is. Several: a JSON object of each leaf's output by node name
    (TorchServe's shape; an output that is not JSON goes in as text)."""
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    combined = {}
    for node, payload in outputs.items():
        try:
            combined[node] = json.loads(payload.data)
        except ValueError:
            combined[node] = payload.data.decode("utf-8", errors="replace")
    return Payload(json.dumps(combined).encode("utf-8"), JSON)
