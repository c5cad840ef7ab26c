"""The CAM methods. This registry is torch-free so that listing methods stays instant."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from camcli.errors import UsageError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    target: str  # "module:Class"
    needs_grad: bool
    summary: str
    paper: str


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            "gradcam",
            "camcli.methods.gradcam:GradCAM",
            True,
            "ReLU of the feature map weighted by the spatial mean of the class gradients",
            "Selvaraju et al. 2017, arXiv:1610.02391",
        ),
        MethodInfo(
            "gradcam++",
            "camcli.methods.gradcam:GradCAMPlusPlus",
            True,
            "Grad-CAM with per-position weights from second/third-order gradient terms",
            "Chattopadhyay et al. 2018, arXiv:1710.11063",
        ),
        MethodInfo(
            "xgradcam",
            "camcli.methods.gradcam:XGradCAM",
            True,
            "Grad-CAM with gradients weighted by the normalised activations (axiom-based)",
            "Fu et al. 2020, arXiv:2008.02312",
        ),
        MethodInfo(
            "hirescam",
            "camcli.methods.gradcam:HiResCAM",
            True,
            "Sum over channels of gradient x activation, position by position (faithful)",
            "Draelos & Carin 2020, arXiv:2011.08891",
        ),
        MethodInfo(
            "gradcam-elementwise",
            "camcli.methods.gradcam:GradCAMElementWise",
            True,
            "HiResCAM with a ReLU on each gradient x activation term before the sum",
            "pytorch-grad-cam; after Draelos & Carin 2020, arXiv:2011.08891",
        ),
        MethodInfo(
            "layercam",
            "camcli.methods.gradcam:LayerCAM",
            True,
            "Activations weighted position by position by the positive gradients (any layer)",
            "Jiang et al. 2021, IEEE TIP 30:5875",
        ),
        MethodInfo(
            "eigengradcam",
            "camcli.methods.eigen:EigenGradCAM",
            True,
            "First principal component of gradient x activation (class-specific Eigen-CAM)",
            "pytorch-grad-cam; after Muhammad & Yeasin 2020, arXiv:2008.00299",
        ),
        MethodInfo(
            "smoothgradcam++",
            "camcli.methods.smooth:SmoothGradCAMPlusPlus",
            True,
            "Grad-CAM++ with gradient powers averaged over 4 noisy copies of the input",
            "Omeiza et al. 2019, arXiv:1908.01224",
        ),
        MethodInfo(
            "cam",
            "camcli.methods.cam:CAM",
            False,
            "Class activation map: the head's linear weights x the last feature map (GAP heads)",
            "Zhou et al. 2016, arXiv:1512.04150",
        ),
        MethodInfo(
            "scorecam",
            "camcli.methods.score:ScoreCAM",
            False,
            "Channels weighted by the softmax of the class score of the input they mask",
            "Wang et al. 2020, arXiv:1910.01279",
        ),
        MethodInfo(
            "sscam",
            "camcli.methods.score:SSCAM",
            False,
            "Score-CAM with the masks' scores averaged over 35 noisy copies",
            "Wang et al. 2020, arXiv:2006.14255",
        ),
        MethodInfo(
            "iscam",
            "camcli.methods.score:ISCAM",
            False,
            "Score-CAM with scores integrated over 10 scalings of the masked input",
            "Naidu et al. 2020, arXiv:2010.03023",
        ),
        MethodInfo(
            "ablationcam",
            "camcli.methods.ablation:AblationCAM",
            False,
            "Channels weighted by the relative drop of the class score when each is zeroed",
            "Desai & Ramaswamy 2020, WACV",
        ),
        MethodInfo(
            "eigencam",
            "camcli.methods.eigen:EigenCAM",
            False,
            "First principal component of the feature map; class-agnostic",
            "Muhammad & Yeasin 2020, arXiv:2008.00299",
        ),
        MethodInfo(
            "guided-backprop",
            "camcli.methods.guided:GuidedBackprop",
            True,
            "Pixel-space input gradients with only positive signals through ReLUs",
            "Springenberg et al. 2015, arXiv:1412.6806",
        ),
        MethodInfo(
            "guided-gradcam",
            "camcli.methods.guided:GuidedGradCAM",
            True,
            "Guided backpropagation x the upsampled Grad-CAM map (pixel-space, class-specific)",
            "Selvaraju et al. 2017, arXiv:1610.02391",
        ),
        MethodInfo(
            "randomcam",
            "camcli.methods.floors:RandomCAM",
            False,
            "Sanity baseline: channels weighted by seeded uniform(-1, 1) random numbers",
            "pytorch-grad-cam's RandomCAM; a floor for faithfulness metrics",
        ),
        MethodInfo(
            "sobel",
            "camcli.methods.floors:SobelEdges",
            False,
            "Sanity baseline: Sobel edge magnitude of the input image, no model at all",
            "Sobel & Feldman 1968; Adebayo et al. 2018, arXiv:1810.03292",
        ),
        MethodInfo(
            "fem",
            "camcli.methods.fem:FEM",
            False,
            "Channels weighted by the share of positions above their mean + 2 std; class-agnostic",
            "Fuad et al. 2020, IPTA, hal-02963298",
        ),
        MethodInfo(
            "kpcacam",
            "camcli.methods.kpca:KPCACAM",
            False,
            "First kernel principal component (sigmoid kernel) of the feature map; class-agnostic",
            "Karmani et al. 2024, arXiv:2410.00267",
        ),
        MethodInfo(
            "shapleycam",
            "camcli.methods.shapley:ShapleyCAM",
            True,
            "Grad-CAM weights from the gradient minus half the Hessian-vector product",
            "Cai 2025, arXiv:2501.06261",
        ),
        MethodInfo(
            "finercam",
            "camcli.methods.finer:FinerCAM",
            True,
            "Grad-CAM of the target logit minus 0.6 x the mean of its 3 closest classes' logits",
            "Zhang et al. 2025, arXiv:2501.11309",
        ),
        MethodInfo(
            "refinecam",
            "camcli.methods.refine:RefineCAM",
            True,
            "Product of several layers' normalised Grad-CAM++ maps (repeat --layer)",
            "pytorch-grad-cam / torchcam RefineCAM (multi-layer refinement)",
        ),
        MethodInfo(
            "fullgrad",
            "camcli.methods.fullgrad:FullGrad",
            True,
            "Input gradient x input plus every conv/BN/linear bias x its gradient; layer-free",
            "Srinivas & Fleuret 2019, arXiv:1905.00780",
        ),
        MethodInfo(
            "legrad",
            "camcli.methods.legrad:LeGrad",
            True,
            "Positive gradients of each ViT block's class score w.r.t. its attention maps",
            "Bousselham et al. 2024, arXiv:2404.03214",
        ),
        MethodInfo(
            "dff",
            "camcli.methods.dff:DeepFeatureFactorization",
            False,
            "K concept maps per image from an NMF of the activations, each with its best class",
            "Collins et al. 2018, arXiv:1806.10206",
        ),
        MethodInfo(
            "rise",
            "camcli.methods.rise:RISE",
            False,
            "Random masks weighted by the class probability of the input they keep; no layer",
            "Petsiuk et al. 2018, arXiv:1806.07421",
        ),
        MethodInfo(
            "drise",
            "camcli.methods.drise:DRISE",
            False,
            "RISE for detectors: masks weighted by IoU x same class x score of the re-detection",
            "Petsiuk et al. 2021, arXiv:2006.03204",
        ),
        MethodInfo(
            "occlusion",
            "camcli.methods.occlusion:Occlusion",
            False,
            "Mean drop of the class probability when a sliding window hides each pixel",
            "Zeiler & Fergus 2014, arXiv:1311.2901",
        ),
    )
}


def method_names() -> list[str]:
    return list(METHODS)


def gradient_free_methods() -> list[str]:
    """The methods that need no gradients: all that run on a model without autograd (ONNX)."""
    return [name for name, info in METHODS.items() if not info.needs_grad]


def get_method_class(name: str) -> type:
    info = METHODS.get(name.lower())
    if info is None:
        import difflib

        close = difflib.get_close_matches(name.lower(), list(METHODS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(
            f"unknown method {name!r}{hint} (available: {', '.join(METHODS)}; see `camcli methods`)"
        )
    module_name, class_name = info.target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
