"""NVIDIA Triton as a meshserve runtime: a registrar mirrors a Triton server into the registry."""
