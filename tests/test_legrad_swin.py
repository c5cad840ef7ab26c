"""LeGrad on torchvision's Swin (V1, V2) against the formula, by brute force in float64.

The reference replaces a block's windowed attention with a loop over windows and tokens
(padding, cyclic shift and the shifted-window mask written out per token), keeps its
probabilities ``P`` and differentiates the class score ``S^l = head(mean_tokens(norm(z^l)))``
w.r.t. them; a token's relevance is ``mean_{h,q} ReLU(dS/dP_hqk)`` over the heads and the
queries of its window. camcli's maps must equal it to 1e-4 of the peak.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

from camcli.errors import UsageError
from camcli.explain import Explainer
from camcli.images import Preprocess
from camcli.models import LoadedModel
from camcli.targets import Target
from tests.test_methods_new_cli import camcli_run, records

# name -> (window side, V2): window 4 on the 8x8 last stage shifts by 2; window 3 pads 8 to 9
# and shifts by 1.
SWINS = {"v1_w4": (4, False), "v1_w3": (3, False), "v2_w4": (4, True)}


def tiny_swin(window: int = 4, v2: bool = False, num_classes: int = 10) -> nn.Module:
    """Two stages (16x16 then 8x8 tokens at 64 px), seeded random weights, a head that is
    not near zero."""
    torch.manual_seed(0)
    extra = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2],
        window_size=[window, window], num_classes=num_classes, **extra,
    )  # fmt: skip
    nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


class LoopAttention(nn.Module):
    """``module``'s windowed attention, one window and one token at a time; keeps each
    window's probabilities (heads, T, T) in ``probabilities[(image, window row, window col)]``
    with the original grid position of each of its tokens in ``positions``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.probabilities: dict[tuple[int, int, int], torch.Tensor] = {}
        self.positions: dict[tuple[int, int, int], list[tuple[int, int]]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        n, h, w, c = x.shape
        wh, ww = m.window_size
        ph, pw = -(-h // wh) * wh, -(-w // ww) * ww  # padded to whole windows
        sh = 0 if wh >= ph else m.shift_size[0]
        sw = 0 if ww >= pw else m.shift_size[1]
        heads, d = m.num_heads, c // m.num_heads
        bias = m.get_relative_position_bias()[0]  # (heads, T, T)
        qkv_bias = m.qkv.bias.clone()
        if hasattr(m, "logit_scale"):  # V2: no key bias
            qkv_bias[c : 2 * c] = 0
        out = x.new_zeros(n, h, w, c)

        def region(i: int, size: int, window: int, shift: int) -> int:
            return 0 if i < size - window else (1 if i < size - shift else 2)

        for b in range(n):
            for a in range(ph // wh):
                for e in range(pw // ww):
                    cells = [(a * wh + i, e * ww + j) for i in range(wh) for j in range(ww)]
                    # a shifted-frame cell (r, s) holds the padded grid's ((r+sh)%ph, (s+sw)%pw)
                    where = [((r + sh) % ph, (s + sw) % pw) for r, s in cells]
                    tokens = torch.stack(
                        [x[b, r, s] if r < h and s < w else x.new_zeros(c) for r, s in where]
                    )
                    q, k, v = nn.functional.linear(tokens, m.qkv.weight, qkv_bias).split(c, -1)
                    q, k, v = (t.reshape(-1, heads, d).transpose(0, 1) for t in (q, k, v))
                    if hasattr(m, "logit_scale"):
                        logits = nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(
                            k, dim=-1
                        ).transpose(-2, -1)
                        logits = logits * torch.clamp(m.logit_scale, max=np.log(100.0)).exp()
                    else:
                        logits = (q * d**-0.5) @ k.transpose(-2, -1)
                    logits = logits + bias
                    if sh or sw:
                        labels = [(region(r, ph, wh, sh), region(s, pw, ww, sw)) for r, s in cells]
                        mask = torch.tensor(
                            [[0.0 if p == q_ else -100.0 for p in labels] for q_ in labels],
                            dtype=x.dtype,
                        )
                        logits = logits + mask
                    p = logits.softmax(-1)
                    self.probabilities[(b, a, e)] = p
                    self.positions[(b, a, e)] = where
                    mixed = (p @ v).transpose(0, 1).reshape(-1, c)
                    mixed = nn.functional.linear(mixed, m.proj.weight, m.proj.bias)
                    for t, (r, s) in enumerate(where):
                        if r < h and s < w:
                            out[b, r, s] = mixed[t]
        return out


def brute_force_legrad(model: nn.Module, block: str, x: torch.Tensor, classes: list[int]):
    module = model.get_submodule(block)
    loop = LoopAttention(module.attn)
    original, kept = module.attn, {}
    module.attn = loop
    handle = module.register_forward_hook(lambda mod, args, out: kept.update(z=out))
    try:
        logits = model(x)
    finally:
        module.attn = original
        handle.remove()
    z = kept["z"]
    scores = model.head(model.norm(z).mean(dim=(1, 2)))
    n, h, w, _ = z.shape
    maps = np.zeros((n, h, w))
    for b, cls in enumerate(classes):
        keys = [k for k in loop.probabilities if k[0] == b]
        grads = torch.autograd.grad(
            scores[b, cls], [loop.probabilities[k] for k in keys], retain_graph=True
        )
        for key, grad in zip(keys, grads, strict=True):
            relevance = torch.relu(grad).mean(dim=(0, 1))  # heads, queries
            for t, (r, s) in enumerate(loop.positions[key]):
                if r < h and s < w:
                    maps[b, r, s] = relevance[t].item()
    return logits, maps


@pytest.mark.parametrize("name", list(SWINS))
def test_legrad_swin_matches_the_formula(name):
    window, v2 = SWINS[name]
    model = tiny_swin(window, v2)
    loaded = LoadedModel(model, name, None, Preprocess(64, 64), None, torch.device("cpu"), 10)
    # shifted (odd) and unshifted blocks, and the default layer (norm): the last block
    blocks = ["features.3.1", "features.3.0"]
    explainers = [Explainer(loaded, method="legrad", layers=[b]) for b in blocks]
    default = Explainer(loaded, method="legrad")
    model.double()  # after the explainers' float32 probe; the same modules, in float64
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected_logits = model(x)
    classes = expected_logits.argsort(1, descending=True)[:, 1].tolist()  # the runner-up
    for block, explainer in zip(blocks, explainers, strict=True):
        logits, ref = brute_force_legrad(model, block, x, classes)
        torch.testing.assert_close(logits, expected_logits)  # the loop is the same attention
        maps = explainer.explain(x, [Target(rank=2)]).maps
        assert maps.shape == (2, 1, 8, 8)
        assert ref.max() > 0 and (ref > 0).mean() > 0.5
        np.testing.assert_allclose(maps[:, 0], ref, rtol=0, atol=1e-4 * ref.max())
    last = explainers[0].explain(x, [Target(rank=2)]).maps
    np.testing.assert_array_equal(default.explain(x, [Target(rank=2)]).maps, last)


def test_legrad_swin_refuses_an_earlier_stage_and_a_whole_stage():
    model = tiny_swin()
    loaded = LoadedModel(model, "swin", None, Preprocess(64, 64), None, torch.device("cpu"), 10)
    with pytest.raises(UsageError, match=r"must be in the last stage, e\.g\. norm or features\.3"):
        Explainer(loaded, method="legrad", layers=["features.1.0"]).explain(
            torch.randn(1, 3, 64, 64), [Target(rank=1)]
        )
    with pytest.raises(UsageError, match=r"legrad on a Swin needs a block .* 'features\.3'"):
        Explainer(loaded, method="legrad", layers=["features.3"])


TINY_SWIN_V2 = """
import torch, torchvision
from torch import nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

def tiny_swin(num_classes=10):
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4],
        num_classes=num_classes, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2,
    )
    nn.init.normal_(model.head.weight, std=0.5)
    return model
"""


def test_legrad_subprocess_on_a_swin(tmp_path):
    from PIL import Image

    factory = tmp_path / "tiny_swin.py"
    factory.write_text(TINY_SWIN_V2)
    image = tmp_path / "x.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    result = camcli_run([
        str(image), "--out", str(out), "--model", f"{factory}:tiny_swin",
        "--weights", "none", "--input-size", "64", "--device", "cpu", "--method", "legrad",
        "-f", "npy", "-t", "top1", "-t", "top2", "--layer", "features.3.0",
        "--layer", "features.3.1",
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = records(out)
    assert sorted(r["target"] for r in found) == ["top1", "top2"]
    maps = [np.load(r["outputs"][0]) for r in found]
    assert all(m.shape == (64, 64) and np.isfinite(m).all() and m.max() > 0 for m in maps)
    assert not np.allclose(maps[0], maps[1])
