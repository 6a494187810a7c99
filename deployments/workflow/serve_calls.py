"""The Serve calls of workflow applications: deploy, delete, statuses (the management part's
:class:`deployments.management.workflow_serve.WorkflowServe`). Blocking Serve APIs run off the
event loop.
"""

from __future__ import annotations

import asyncio

from deployments.common.ray_private import delete_application
from deployments.common.workflow_spec import WorkflowArgs
from deployments.management.serve_control import start_application


class ServeWorkflows:
    """Workflow applications through Ray Serve."""

    async def deploy(self, app_name: str, args: WorkflowArgs) -> None:
        """Deploy (or update) a workflow application without waiting for it."""
        from deployments.workflow.builder import workflow_application

        await start_application(workflow_application(args), app_name)

    async def delete(self, app_name: str) -> None:
        """Delete an application and wait until it is gone."""
        await asyncio.to_thread(delete_application, app_name, True)

    async def statuses(self) -> dict[str, tuple[str, str]]:
        """Application name -> (status, message)."""
        from ray import serve

        status = await asyncio.to_thread(serve.status)
        found = {}
        for name, app in status.applications.items():
            # A replica that cannot start says why in its deployment's message, not the app's.
            messages = [d.message for d in app.deployments.values() if d.message]
            found[name] = (str(app.status.value), messages[0] if messages else app.message or "")
        return found
