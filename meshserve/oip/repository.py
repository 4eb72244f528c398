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
