"""The gRPC interfaces the ingress serves, compiled from their published ``.proto`` files.

The ``.proto`` files beside this module are vendored, unmodified apart from a provenance
header (see README.md here): TorchServe's ``inference.proto`` and ``management.proto``
(pytorch/serve v0.12.0) and the Open Inference Protocol's ``open_inference_grpc.proto``
(kserve/open-inference-protocol). Nothing is hand-written: grpcio-tools' ``protoc`` compiles
them when first needed (about 0.1 s, once per process) into a descriptor set, and the message
classes are built from it.

They live in a descriptor pool of their own, not protobuf's default one: the OIP messages are
``inference.*``, the same names tritonclient's Triton stubs register, and two files defining
one name in the default pool make the second import fail in any process that has both.
"""

from __future__ import annotations

import functools
import importlib.resources
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = (
    "open_inference/open_inference_grpc.proto",
    "torchserve/inference.proto",
    "torchserve/management.proto",
)
OIP_SERVICE = "inference.GRPCInferenceService"
TORCHSERVE_INFERENCE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
TORCHSERVE_MANAGEMENT = "org.pytorch.serve.grpc.management.ManagementAPIsService"


class ProtoCompileError(RuntimeError):
    """protoc refused the vendored files (a broken checkout or grpcio-tools install)."""


def include_dirs() -> list[str]:
    """Where protoc finds the vendored files and what they import (google/protobuf/*.proto
    ships with grpcio-tools, google/rpc/status.proto with googleapis-common-protos)."""
    import google.rpc  # googleapis-common-protos

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    rpc_root = Path(next(iter(google.rpc.__path__))).parents[1]
    return [str(PROTO_DIR), str(well_known), str(rpc_root)]


@functools.cache
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The vendored files and their imports, compiled by grpcio-tools' protoc."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="raytorch-protos-") as tmp:
        out = Path(tmp) / "protos.pb"
        args = ["protoc", *(f"-I{d}" for d in include_dirs())]
        args += ["--include_imports", f"--descriptor_set_out={out}", *PROTO_FILES]
        if protoc.main(args) != 0:
            raise ProtoCompileError(f"protoc could not compile {', '.join(PROTO_FILES)} in {PROTO_DIR}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding only the compiled files."""
    private = descriptor_pool.DescriptorPool()
    for file in descriptor_set().file:
        private.Add(file)
    return private


def message(full_name: str) -> type[Any]:
    """The message class of ``full_name`` (e.g. ``inference.ModelInferRequest``)."""
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(full_name))


@dataclass(frozen=True)
class Method:
    """One RPC of a service: its message classes and whether each side streams."""

    name: str
    request: type[Any]
    response: type[Any]
    client_streaming: bool
    server_streaming: bool


def service_methods(full_name: str) -> dict[str, Method]:
    """The RPCs of service ``full_name``, by method name."""
    service = pool().FindServiceByName(full_name)
    return {
        m.name: Method(
            m.name,
            message_factory.GetMessageClass(m.input_type),
            message_factory.GetMessageClass(m.output_type),
            bool(m.client_streaming),
            bool(m.server_streaming),
        )
        for m in service.methods
    }
