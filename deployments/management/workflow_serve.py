"""What the workflow manager needs of Serve: deploy, delete, statuses of workflow
applications, and the workflows declared in the Serve config.
:class:`deployments.management.workflows.WorkflowManager` takes any object with these methods:
the real one (``deployments.workflow.serve_calls.ServeWorkflows``) is handed to the management
deployment by its builder (``deployments/app.py``), since a workflow application is built above
this layer; its tests use a fake Serve.
"""

from __future__ import annotations

from typing import Protocol

from deployments.common.workflow_spec import WorkflowArgs


class WorkflowServe(Protocol):
    """The Serve calls of workflow applications (``ServeWorkflows``; tests use a fake)."""

    async def deploy(self, app_name: str, args: WorkflowArgs) -> None: ...
    async def delete(self, app_name: str) -> None: ...
    async def statuses(self) -> dict[str, tuple[str, str]]: ...
    async def declared(self) -> dict[str, tuple[str, WorkflowArgs | None]]: ...
