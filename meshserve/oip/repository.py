"""Parameters of the repository extension (RepositoryModelLoad / RepositoryModelUnload)."""

from __future__ import annotations

from collections.abc import Mapping

from meshserve.errors import InvalidArgument
from meshserve.names import check_version
from meshserve.protos.inference import grpc_service_pb2 as pb


def version_parameter(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> str:
    """The optional ``version`` parameter of a load or unload request ("" when absent)."""
    if "version" not in parameters:
        return ""
    param = parameters["version"]
    choice = param.WhichOneof("parameter_choice")
    if choice == "string_param":
        return check_version(str(param.string_param))
    if choice == "int64_param":
        return str(param.int64_param)
    raise InvalidArgument("parameter 'version' must be a string or an integer")


def artifact_parameters(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> tuple[str, int]:
    """(``artifact`` folder, ``memory_bytes`` estimate) of a load that places a catalog model; ("", 0) if absent."""
    artifact, memory = "", 0
    if "artifact" in parameters:
        param = parameters["artifact"]
        if param.WhichOneof("parameter_choice") != "string_param":
            raise InvalidArgument("parameter 'artifact' must be a string: the version's folder")
        artifact = param.string_param
    if "memory_bytes" in parameters:
        param = parameters["memory_bytes"]
        if param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 0:
            raise InvalidArgument("parameter 'memory_bytes' must be a non-negative integer")
        memory = param.int64_param
    return artifact, memory


def load_parameters(version: str, artifact: str = "", memory_bytes: int = 0) -> dict[str, pb.ModelRepositoryParameter]:
    """The parameters of a RepositoryModelLoad of ``version`` (from ``artifact``, taking ``memory_bytes``)."""
    parameters = {"version": pb.ModelRepositoryParameter(string_param=version)} if version else {}
    if artifact:
        parameters["artifact"] = pb.ModelRepositoryParameter(string_param=artifact)
    if memory_bytes:
        parameters["memory_bytes"] = pb.ModelRepositoryParameter(int64_param=memory_bytes)
    return parameters
