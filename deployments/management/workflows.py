"""TorchServe's workflow management (``/workflows``): register a ``.war``, list, describe,
unregister, and bring registered workflows back after a restart.

A registration reads top to bottom: find and unpack the archive, check its spec and function
nodes, claim the name, register each model node as the model ``<workflow>__<node>`` through the
model manager (the same path as ``POST /models``: its own application, replicas, batching and
metrics), deploy the workflow application that runs the DAG, wait for it, record it. Any
failure undoes what was done and answers with the failing step's own status, naming the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from deployments.common.naming import registered_workflow_app_name, workflow_model_name
from deployments.common.workflow_spec import ModelNode, WorkflowArgs, dag_nodes, validate_args
from deployments.management.archive_sources import is_remote
from deployments.management.downloads import download
from deployments.management.register_params import RegisterParams
from deployments.management.war_archive import WarContents, check_functions, read_war
from deployments.management.workflow_serve import WorkflowServe
from deployments.management.workflow_store import WorkflowRecord, WorkflowStore
from handlers.errors import (
    ConflictError,
    ModelLoadError,
    ModelNotFoundError,
    RaytorchError,
    RequestTimeoutError,
    WorkflowNodeError,
    WorkflowNotFoundError,
)

logger = logging.getLogger("ray.serve")
READY_POLL_S = 0.5


class Models(Protocol):
    """What workflows need of the model manager (deployments.management.manager.ModelManager)."""

    async def register(self, params: RegisterParams) -> tuple[int, dict[str, str]]: ...
    async def unregister(self, model: str, version: str | None) -> dict[str, str]: ...
    async def scale(
        self, model: str, version: str | None, low: int, high: int, synchronous: bool
    ) -> tuple[int, dict]: ...


class WorkflowManager:
    """The ``/workflows`` operations (see the module docstring)."""

    def __init__(
        self,
        models: Models,
        serve: WorkflowServe,
        state_dir: Path,
        model_store: Path,
        download_policy: Any,
        allow_archive_code: bool,
        register_timeout_s: float,
    ) -> None:
        self.models, self.serve = models, serve
        self.folder = state_dir / "workflows"
        self.store = WorkflowStore(state_dir / "workflows.json")
        self.model_store, self.download_policy = model_store, download_policy
        self.downloads_dir = state_dir / "downloads"
        self.allow_archive_code, self.register_timeout_s = allow_archive_code, register_timeout_s
        self._claimed: set[str] = set()

    async def register(self, url: str, name: str | None, startup_timeout: int | None) -> dict[str, str]:
        """TorchServe's register: 200 once every model node and the workflow are running."""
        contents = await self._unpack(url, name)
        taken = self.store.get(contents.name) is not None or contents.name in await self.serve.declared()
        if contents.name in self._claimed or taken:
            shutil.rmtree(contents.folder, ignore_errors=True)
            raise ConflictError(f"Workflow {contents.name} is already registered.")
        self._claimed.add(contents.name)
        registered: list[str] = []
        app_name = registered_workflow_app_name(contents.name)
        try:
            folder = self.folder / contents.name
            shutil.rmtree(folder, ignore_errors=True)
            contents.folder.rename(folder)
            contents = WarContents(
                folder,
                contents.name,
                contents.spec,
                folder / contents.handler.name if contents.handler else None,
            )
            args = workflow_args(contents, url)
            timeout = float(startup_timeout or self.register_timeout_s)
            results = await asyncio.gather(
                *(
                    self._register_node(contents, node, timeout, registered)
                    for node in contents.spec.models
                    if node in dag_nodes(contents.spec.dag)
                ),
                return_exceptions=True,
            )
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            await self.serve.deploy(app_name, args)
            await self._wait_running(app_name, contents.name, timeout)
            self.store.add(
                WorkflowRecord(
                    name=contents.name,
                    url=url,
                    args=args.model_dump(mode="json"),
                    models=registered,
                    folder=str(folder),
                )
            )
        except BaseException:
            await self._undo(app_name, registered, self.folder / contents.name, deployed=True)
            raise
        finally:
            self._claimed.discard(contents.name)
        return {"status": f"Workflow {contents.name} has been registered and scaled successfully."}

    async def _unpack(self, url: str, name: str | None) -> WarContents:
        from deployments.management.archive_sources import local_archive

        scratch = self.folder / ".incoming" / f"{time.time_ns()}"
        if is_remote(url):
            archive = await asyncio.to_thread(download, url, self.downloads_dir, self.download_policy)
        else:
            try:
                archive = local_archive(url, self.model_store)
            except ModelNotFoundError:
                raise WorkflowNotFoundError(f"Workflow not found in workflow store: {url}") from None
        try:
            contents = await asyncio.to_thread(read_war, archive, scratch, name)
            check_functions(contents, self.allow_archive_code)
            return contents
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            if is_remote(url):
                archive.unlink(missing_ok=True)

    async def _register_node(
        self, contents: WarContents, node: str, timeout: float, registered: list[str]
    ) -> None:
        model = contents.spec.models[node]
        name = workflow_model_name(contents.name, node)
        params = RegisterParams(
            url=model.url, model_name=name, batch_size=model.batch_size,
            max_batch_delay=model.max_batch_delay, initial_workers=model.min_workers,
            synchronous=True, startup_timeout=int(min(timeout, 3600)),
        )  # fmt: skip
        try:
            await self.models.register(params)
            registered.append(name)
            if model.max_workers > model.min_workers:
                await self.models.scale(name, None, model.min_workers, model.max_workers, False)
        except RaytorchError as exc:
            raise WorkflowNodeError(
                f"Workflow {contents.name} has failed to register: node {node} (model {name}, {model.url}): "
                f"{exc.message}",
                exc.status, node, exc.type_name,
            ) from None  # fmt: skip

    async def _wait_running(self, app_name: str, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, message = (await self.serve.statuses()).get(app_name, ("NOT_STARTED", ""))
            if status == "RUNNING":
                return
            if status == "DEPLOY_FAILED":
                raise ModelLoadError(f"Workflow {name} failed to start: {summary(message)}")
            await asyncio.sleep(READY_POLL_S)
        raise RequestTimeoutError(f"Workflow {name} was not running within {timeout_s:g}s")

    async def _undo(self, app_name: str, models: list[str], folder: Path, deployed: bool) -> None:
        if deployed:
            with contextlib.suppress(Exception):
                await self.serve.delete(app_name)
        for model in models:
            with contextlib.suppress(ModelNotFoundError):
                try:
                    await self.models.unregister(model, None)
                except Exception as exc:  # the rest is still undone; the log says what stayed
                    logger.error("Removing model %s of a workflow failed: %s", model, exc)
        shutil.rmtree(folder, ignore_errors=True)

    async def unregister(self, name: str) -> dict[str, str]:
        """Delete the workflow application, then its models and files."""
        record = self.store.get(name)
        if record is None:
            declared = (await self.serve.declared()).get(name)
            if declared is not None:
                raise ConflictError(
                    f"Workflow {name} is declared in the Serve config (application {declared[0]}): "
                    "remove it from the config, not through the API"
                )
            raise WorkflowNotFoundError(f"Workflow not found: {name}")
        await self._undo(
            registered_workflow_app_name(name), record.models, Path(record.folder or self.folder / name), True
        )
        self.store.remove(name)
        return {"status": f'Workflow "{name}" unregistered'}

    async def list(self, limit: int, start: int) -> dict[str, Any]:
        """TorchServe's page of ``{workflowName, workflowUrl}`` (a limit above 100, or below 0,
        is 100): registered workflows, then those of the Serve config (``workflowUrl`` null,
        ``source`` "config")."""
        limit = 100 if limit > 100 or limit < 0 else limit
        declared = await self.serve.declared()
        entries = [{"workflowName": n, "workflowUrl": self.store.get(n).url} for n in self.store.names()]  # type: ignore[union-attr]
        entries += [
            {"workflowName": n, "workflowUrl": None, "source": "config"}
            for n in sorted(declared)
            if self.store.get(n) is None
        ]
        start = max(0, start)
        body: dict[str, Any] = {}
        if start + limit < len(entries):
            body["nextPageToken"] = str(start + limit)
        body["workflows"] = entries[start : start + limit]
        return body

    async def describe(self, name: str) -> list[dict[str, Any]]:
        """TorchServe's describe, plus the application's status and each node; a workflow of
        the Serve config is described from its running replica (``source`` "config")."""
        record = self.store.get(name)
        if record is not None:
            args: WorkflowArgs | None = WorkflowArgs.model_validate(record.args)
            app_name, url, source = registered_workflow_app_name(name), record.url, {}
        else:
            app_name, args = (await self.serve.declared()).get(name, ("", None))
            if not app_name:
                raise WorkflowNotFoundError(f"Workflow not found: {name}")
            url, source = None, {"source": "config", "application": app_name}
        status, message = (await self.serve.statuses()).get(app_name, ("NOT_STARTED", ""))
        described: dict[str, Any] = {"workflowName": name, "workflowUrl": url, **source}
        if args is not None:
            described.update(args.describe)
            described["workflowDag"] = java_map(args.dag)
        described["status"] = status
        if message:
            described["message"] = summary(message)
        if args is not None:
            described["nodes"] = [
                {"node": node, "kind": "model", "model": model.model}
                if (model := args.model_node(node))
                else {"node": node, "kind": "function"}
                for node in dag_nodes(args.dag)
            ]
        return [described]

    async def restore(self) -> list[str]:
        """Deploy registered workflows whose application is missing (after a restart); their
        models come back with the model registry."""
        statuses = await self.serve.statuses()
        restored = []
        for name in self.store.names():
            app_name = registered_workflow_app_name(name)
            if app_name in statuses:
                continue
            record = self.store.get(name)
            try:
                await self.serve.deploy(app_name, validate_args(record.args))  # type: ignore[union-attr]
                restored.append(name)
            except Exception as exc:
                logger.error("Restoring workflow %s failed: %s", name, exc)
        return restored


def workflow_args(contents: WarContents, url: str) -> WorkflowArgs:
    """The workflow application's args for an unpacked ``.war``."""
    spec = contents.spec
    nodes = dag_nodes(spec.dag)
    models = {
        node: ModelNode(
            model=workflow_model_name(contents.name, node),
            retry_attempts=spec.models[node].retry_attempts,
            timeout_ms=spec.models[node].timeout_ms,
        )
        for node in spec.models
        if node in nodes
    }
    defaults = spec.defaults
    return WorkflowArgs(
        name=contents.name,
        models=models,  # type: ignore[arg-type]
        dag=spec.dag,
        handler=str(contents.handler) if spec.function_nodes() else None,
        retry_attempts=defaults.retry_attempts,
        timeout_ms=defaults.timeout_ms,
        url=url,
        describe={
            "minWorkers": defaults.min_workers,
            "maxWorkers": defaults.max_workers,
            "batchSize": defaults.batch_size,
            "maxBatchDelay": defaults.max_batch_delay,
        },
    )


def java_map(dag: dict[str, list[str]]) -> str:
    """The DAG as TorchServe's describe prints it (a Java map): ``{a=[b, c], b=[d]}``."""
    return "{" + ", ".join(f"{node}=[{', '.join(children)}]" for node, children in dag.items()) + "}"


def summary(message: str) -> str:
    """The last line of Serve's message (it may hold a whole traceback)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
