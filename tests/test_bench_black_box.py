"""The reference side of issue 24's benchmark rows (benchmarks/black_box_rows.py,
occlusion_profile.py, incremental_occlusion.py): the plain occlusion loop whose time is the
floor in docs/benchmarks.md computes captum's map, the changed-region probe measures what it
says, and a row names what the camcli it runs lacks."""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import black_box_rows
import incremental_occlusion
import occlusion_profile


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()  # fmt: skip


def test_plain_batched_occlusion_equals_captum():
    model = tiny_net()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours, forwarded = occlusion_profile.plain_map(model, x, target=2, batch=7)
    with torch.no_grad():
        ref = occlusion_profile.captum_map(model, x, target=2, ppe=7)[0, 0]
    assert forwarded == 170  # 13 x 13 windows and the unoccluded image
    peak = float(ref.abs().max())
    assert peak > 0
    assert float((ours - ref).abs().max()) <= 1e-5 * peak


def test_extent_is_the_span_of_changed_rows_or_columns():
    diff = torch.zeros(2, 3, 10, 20)
    diff[1, 2, 3:6, 4:8] = 0.5
    diff[0, 0, 5, 11] = 1.0  # a second changed spot widens the columns' span to 4..11
    assert incremental_occlusion.extent(diff, 2) == 3 / 10
    assert incremental_occlusion.extent(diff, 3) == 8 / 20
    assert incremental_occlusion.extent(torch.zeros(1, 1, 4, 4), 2) == 0.0
    assert incremental_occlusion.extent(torch.ones(1, 5), 3) == 1.0  # a linear layer: all of it


def test_a_row_names_the_flag_or_method_camcli_lacks():
    assert black_box_rows.camcli_missing("--top-k", "--no-such-flag", method="gradcam") == (
        "camcli run has no --no-such-flag on this branch"
    )
    assert black_box_rows.camcli_missing("--top-k", method="no-such-method") == (
        "camcli methods does not list no-such-method on this branch"
    )
    assert black_box_rows.camcli_missing("--top-k", method="gradcam") is None
