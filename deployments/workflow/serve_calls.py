"""The Serve calls of workflow applications: deploy, delete, statuses, the workflows of the
Serve config (the management part's :class:`deployments.management.workflow_serve.WorkflowServe`).
Blocking Serve APIs run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging

from deployments.common.naming import parse_workflow_deployment_name, registered_workflow_app_name
from deployments.common.ray_private import delete_application
from deployments.common.workflow_spec import WorkflowArgs, validate_args
from deployments.management.serve_control import start_application

logger = logging.getLogger("ray.serve")
# How long a workflow replica may take to say what it is (a handle call).
DESCRIBE_TIMEOUT_S = 10.0


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

    async def declared(self) -> dict[str, tuple[str, WorkflowArgs | None]]:
        """Workflows of the Serve config (applications other than ``workflow:<name>``), by
        name: their application and args, asked of a running replica (None when the
        application is not running, or its replica does not answer in time)."""
        from ray import serve

        status = await asyncio.to_thread(serve.status)
        found: dict[str, tuple[str, WorkflowArgs | None]] = {}
        for app_name, app in status.applications.items():
            for deployment in app.deployments:
                name = parse_workflow_deployment_name(deployment)
                if name is None or app_name == registered_workflow_app_name(name):
                    continue
                args = None
                if str(app.status.value) == "RUNNING":
                    handle = serve.get_deployment_handle(deployment, app_name=app_name)
                    try:
                        raw = await asyncio.wait_for(handle.describe.remote(), DESCRIBE_TIMEOUT_S)
                        args = validate_args(raw)
                    except Exception as exc:  # listed without its DAG; the log says why
                        logger.warning("Workflow %s (%s) did not describe itself: %s", name, app_name, exc)
                found[name] = (app_name, args)
        return found
