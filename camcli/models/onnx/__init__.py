"""``--model path/to/model.onnx``: an ONNX graph run by ONNX Runtime, as a torch module.

``OnnxModel`` wraps an ``onnxruntime.InferenceSession`` so that the whole engine (batching,
targets, outputs, ``check``, ``evaluate``, Ray) runs it unchanged:

- every intermediate float tensor of the graph is a *tap*, a parameter-free child module named
  by the tensor's own name (``camcli layers model.onnx`` lists them; ``--layer NAME`` takes
  the graph's name as it is). ``forward`` asks the session for the logits plus the tensors
  whose taps carry hooks (exposed as extra graph outputs; one session per set of them) and
  calls each such tap on its tensor, so ``ActivationRecorder``'s hooks fire as on a torch
  layer. When a hook *replaces* a tap's output (Ablation-CAM, DFF go through
  ``camcli.hooks.substituted``), the rest of the graph runs from the replacement: a tail
  session whose one input is that tensor.
- a head that is global average pooling (+ Flatten/Reshape) + one Gemm or MatMul (+ Add) is
  also an ``nn.Linear`` child built from the graph's initialisers, so ``cam`` finds it.
- there is no autograd: ``differentiable = False``, and the explainer refuses a method that
  needs gradients in one line naming those that work.

The graph's input gives the layout (NCHW, or NHWC: transposed here), the input size (fixed H
and W) and the batch (dynamic, or a fixed 1: batches run one image at a time). Everything
camcli cannot use is refused in one line that names the file and what it found.

Its modules: ``graph`` reads and checks the file (each refusal is one line), ``module`` is the
graph as a torch module (``OnnxModel``), ``load`` builds the ``LoadedModel``.
"""
