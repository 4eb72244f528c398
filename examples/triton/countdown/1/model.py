"""countdown: a decoupled model; N in, N responses out (COUNT = N, N-1, ..., 1).

N = 0 answers nothing but the final flag; N outside 0..1000 answers one error. Every
request ends with the final flag on a response of its own, so a client that asks for
empty final responses (``enable_empty_final_response``) always sees where it ends.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

LIMIT = 1000


class TritonPythonModel:
    def execute(self, requests: list[pb_utils.InferenceRequest]) -> None:
        # Decoupled: responses go out through each request's sender, execute returns None.
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
            if 0 <= n <= LIMIT:
                for count in range(n, 0, -1):
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("COUNT", np.array([count], np.int32))]))
            else:
                error = pb_utils.TritonError(f"countdown: N must be between 0 and {LIMIT}, got {n}",
                                             pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
