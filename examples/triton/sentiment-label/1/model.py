"""positive (p >= 0.6), negative (p <= 0.4) or neutral, for each probability that a text is positive."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):  # type: ignore[no-untyped-def]
        responses = []
        for request in requests:
            prob = pb_utils.get_input_tensor_by_name(request, "prob").as_numpy()
            label = np.where(prob >= 0.6, b"positive", np.where(prob <= 0.4, b"negative", b"neutral"))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("label", label.astype(np.object_))]))
        return responses
