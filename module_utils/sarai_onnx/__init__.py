"""sarai_onnx: the tested core behind the onnx_* Ansible modules.

One module per job: files (hashes, manifests, atomic directories), model (reading ONNX files and
their external data), info, quantize, inputs, session, validate. `python -m sarai_onnx` runs the
same functions from the command line (how a Windows build host runs them).
"""

__version__ = "0.1.0"
