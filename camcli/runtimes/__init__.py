"""Forward passes on a faster runtime beside PyTorch: ONNX Runtime or OpenVINO (``--runtime``).

Many of camcli's forward passes need no gradient: the Score-CAM family's and the black-box
methods' masked inputs, ``evaluate``'s perturbed ones, and, for the gradient methods, the whole
model before the hooked layer (the backward stops there). This package runs those passes on
another runtime and leaves the rest to PyTorch:

- ``export``: the model (or the part before a layer) written to ONNX once, cached by its
  weights and input size;
- ``sessions``: an ONNX Runtime or OpenVINO session behind one call, tensor in, tensor out;
- ``split``: a model cut at a layer with ``torch.fx`` (the part before it on the runtime, the
  rest in PyTorch with autograd), or the reason it cannot be cut exactly;
- ``choose``: ``--runtime auto``'s rule and measurement, and the ``Offload`` an explainer uses.

Nothing here prints: a runtime that cannot serve is a reason in the ``Offload``, said by the
commands (and in the manifest's settings and ``--json``).
"""

from camcli.runtimes.choose import RUNTIMES, Offload, choose_runtime

__all__ = ["RUNTIMES", "Offload", "choose_runtime"]
