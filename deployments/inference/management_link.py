"""The ingress's calls to the management deployment: the routing feed it long-polls, the
management token (checked before a ``/models`` body is read; the inference token too), and
``/models`` requests and TorchServe's gRPC management calls, which the management deployment
answers with its own API code.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve
from ray.serve.exceptions import RayServeException

from deployments.common.auth import check_bearer
from deployments.common.forwarding import ForwardedRequest, ForwardedResponse, ManagementCall
from deployments.common.http_errors import REPLICA_LOST_RETRY_AFTER_S, call_error
from deployments.common.naming import MANAGEMENT_APP, MANAGEMENT_DEPLOYMENT
from handlers.errors import ModelNotReadyError, ResourceNotFoundError, UnauthorizedError

MANAGEMENT_TIMEOUT_S = 5.0
TOKEN_RECHECK_S = 10.0
NO_MANAGEMENT = "The management API is not served here: the config has no 'management' application"
# A synchronous register waits for the model to load (and maybe download): allow for it.
MANAGEMENT_CALL_TIMEOUT_S = 900.0


class ManagementLink:
    """A handle to the management deployment, made when first needed and again after a
    failure (the management app may be redeployed), and the token it keeps."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._token: str | None = None
        self._token_at = 0.0

    def _management(self) -> Any:
        # KeyError or RayServeException when this server's config has no management app.
        if self._handle is None:
            self._handle = serve.get_deployment_handle(MANAGEMENT_DEPLOYMENT, app_name=MANAGEMENT_APP)
        return self._handle

    def _served(self) -> Any:
        try:
            return self._management()
        except (KeyError, RayServeException):
            raise ResourceNotFoundError(NO_MANAGEMENT) from None

    async def routing_changes(self, since: int, timeout_s: float, epoch: str) -> Any:
        """The routing changes after ``since`` (a long poll of up to ``timeout_s``)."""
        try:
            call = self._management().routing_changes.remote(since, timeout_s, epoch)
            return await asyncio.wait_for(call, timeout=timeout_s + MANAGEMENT_TIMEOUT_S)
        except Exception:
            self._handle = None  # a new handle once the management app is back
            raise

    async def token(self) -> str:
        """The management token (for inference auth), asked of the management app once."""
        if self._token is None:
            call = self._management().token.remote()
            self._token = await asyncio.wait_for(call, timeout=MANAGEMENT_TIMEOUT_S)
            self._token_at = time.monotonic()
        return self._token

    async def check_management_token(self, header: str | None) -> None:
        """401 unless ``header`` holds the management token: checked in the ingress, before a
        ``/models`` body is read or sent anywhere. A refused token is checked once more against
        a fresh copy (at most every ``TOKEN_RECHECK_S``), for a management app restarted with
        a new key."""
        try:
            token = await self.token()
            try:
                check_bearer(header, token)
            except UnauthorizedError:
                if time.monotonic() - self._token_at < TOKEN_RECHECK_S:
                    raise
                self._token = None
                check_bearer(header, await self.token())
        except (KeyError, RayServeException):  # this server's config has no management app
            raise ResourceNotFoundError(NO_MANAGEMENT) from None
        except asyncio.TimeoutError:
            raise ModelNotReadyError(
                "The management API cannot check the token right now (it did not answer); retry.",
                retry_after_s=REPLICA_LOST_RETRY_AFTER_S,
            ) from None
        except Exception as exc:
            error = call_error(exc, "The management API")
            if error is None:
                raise
            raise error from None

    async def forward_to_management(self, request: ForwardedRequest) -> ForwardedResponse:
        """A ``/models`` request, answered by the management deployment's own API."""
        return await asyncio.wait_for(self._served().http.remote(request), MANAGEMENT_CALL_TIMEOUT_S)

    async def manage(self, call: ManagementCall) -> ForwardedResponse:
        """A gRPC management call, answered by the management deployment's REST API code."""
        return await asyncio.wait_for(self._served().grpc_management.remote(call), MANAGEMENT_CALL_TIMEOUT_S)
