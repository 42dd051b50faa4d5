"""What the rollout talks to: the gateway's HTTP API and TF Serving's ModelService over gRPC.

Every call has a timeout; a failure is one RolloutError line naming the URL or address and
the reason. The gateway client uses the standard library (a few small calls, no session).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import grpc

from contract.tfs_grpc import model_service
from contract.tfs_protos import (
    GetModelStatusRequest,
    ModelSpec,
    ModelVersionState,
    ReloadConfigRequest,
)
from rollout.errors import RolloutError

ADMIN_KEY_HEADER = "X-Admin-Key"  # service.admin reads it


class Gateway:
    """One gateway (or one host's worker processes behind one port)."""

    def __init__(self, url: str, *, admin_key: str | None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._admin_key = admin_key
        self._timeout_s = timeout_s

    def _request(self, method: str, path: str, body: Any = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if path.startswith("/admin/") and self._admin_key:
            request.add_header(ADMIN_KEY_HEADER, self._admin_key)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as reply:
                return bytes(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise RolloutError(f"{method} {self.url}{path} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RolloutError(f"{method} {self.url}{path} failed: {reason}") from None

    def model(self, name: str) -> dict[str, Any]:
        """The gateway's `/v1/models` entry for `name` ({} while it serves no version of it)."""
        listing = json.loads(self._request("GET", "/v1/models"))
        return next((m for m in listing.get("models", []) if m.get("name") == name), {})

    def set_canary(self, name: str, fraction: float) -> dict[str, Any]:
        """PUT the canary's share of `name`'s default traffic."""
        path = f"/admin/models/{name}/canary"
        return dict(json.loads(self._request("PUT", path, {"fraction": fraction})))

    def metrics(self) -> str:
        return self._request("GET", "/metrics").decode("utf-8")


class ModelServer:
    """TF Serving's ModelService: version states and config reloads."""

    def __init__(self, address: str, *, timeout_s: float = 30.0) -> None:
        self.address = address
        self._timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = model_service(self._channel)

    def states(self, model: str) -> dict[int, tuple[str, str]]:
        """version -> (state name, error message) for every version TF Serving knows."""
        request = GetModelStatusRequest(model_spec=ModelSpec(name=model))
        try:
            reply = self._stub.GetModelStatus(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise RolloutError(
                f"GetModelStatus({model}) at {self.address} failed: {exc.code().name}: "
                f"{exc.details()}"
            ) from None
        return {
            s.version: (ModelVersionState(s.state).name, s.status.error_message)
            for s in reply.model_version_status
        }

    def reload(self, config: Any) -> None:
        """HandleReloadConfigRequest with `config`, so TF Serving applies it now rather than
        at its next poll of the file (which then finds the same config)."""
        request = ReloadConfigRequest(config=config)
        try:
            reply = self._stub.HandleReloadConfigRequest(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise RolloutError(
                f"reloading the config at {self.address} failed: {exc.code().name}: {exc.details()}"
            ) from None
        if reply.status.error_code:
            raise RolloutError(
                f"TF Serving at {self.address} refused the config: {reply.status.error_message}"
            )

    def close(self) -> None:
        self._channel.close()
