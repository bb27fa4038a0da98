"""The U-Net of the old service, with the same architecture and the same ``state_dict`` keys.

Keys are ``down_convs.{i}.conv1|conv2``, ``up_convs.{i}.upconv|conv1|conv2`` and ``conv_final``, so a
checkpoint trained for the old service (``model/live_model.pickle``) loads with ``strict=True``.

Example:
    >>> net = UNet(num_classes=1, in_channels=10, depth=5, start_filts=16)
    >>> sorted(net.state_dict())[:2]
    ['conv_final.bias', 'conv_final.weight']
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

UP_MODES = ("transpose", "upsample")
MERGE_MODES = ("concat", "add")


class DownConv(nn.Module):
    """Two 3x3 convolutions with ReLU, then a 2x2 max-pool unless this is the deepest block."""

    def __init__(self, in_channels: int, out_channels: int, pooling: bool = True) -> None:
        super().__init__()
        self.pooling = pooling
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv1(x))
        before_pool = F.relu(self.conv2(x))
        pooled = F.max_pool2d(before_pool, kernel_size=2, stride=2) if self.pooling else before_pool
        return pooled, before_pool


class UpConv(nn.Module):
    """Upsample by 2 (halving channels), merge with the encoder output, then two 3x3 convs with ReLU."""

    def __init__(self, in_channels: int, out_channels: int, merge_mode: str, up_mode: str) -> None:
        super().__init__()
        self.merge_mode = merge_mode
        if up_mode == "transpose":
            self.upconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.upconv = nn.Sequential(
                nn.Upsample(mode="bilinear", scale_factor=2), nn.Conv2d(in_channels, out_channels, 1)
            )
        merged = 2 * out_channels if merge_mode == "concat" else out_channels
        self.conv1 = nn.Conv2d(merged, out_channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, from_down: torch.Tensor, from_up: torch.Tensor) -> torch.Tensor:
        from_up = self.upconv(from_up)
        x = torch.cat((from_up, from_down), 1) if self.merge_mode == "concat" else from_up + from_down
        x = F.relu(self.conv1(x))
        return F.relu(self.conv2(x))


class UNet(nn.Module):
    """U-Net whose input height and width must be multiples of ``2 ** (depth - 1)``.

    The output is ReLU-ed, as the old service did before thresholding at 0.5.
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_channels: int = 10,
        depth: int = 5,
        start_filts: int = 16,
        up_mode: str = "transpose",
        merge_mode: str = "concat",
    ) -> None:
        super().__init__()
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, not {up_mode!r}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, not {merge_mode!r}")
        if up_mode == "upsample" and merge_mode == "add":
            raise ValueError("up_mode 'upsample' cannot be combined with merge_mode 'add'")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.depth = depth
        self.start_filts = start_filts

        down, outs = [], in_channels
        for i in range(depth):
            ins, outs = outs, start_filts * (2**i)
            down.append(DownConv(ins, outs, pooling=i < depth - 1))
        up = []
        for _ in range(depth - 1):
            ins, outs = outs, outs // 2
            up.append(UpConv(ins, outs, merge_mode=merge_mode, up_mode=up_mode))
        self.down_convs = nn.ModuleList(down)
        self.up_convs = nn.ModuleList(up)
        self.conv_final = nn.Conv2d(outs, num_classes, kernel_size=1)
        self.reset_params()

    @property
    def size_multiple(self) -> int:
        """Height and width of an input must be a multiple of this."""
        return 1 << (self.depth - 1)

    def reset_params(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down_convs:
            x, before_pool = block(x)
            skips.append(before_pool)
        for i, block in enumerate(self.up_convs):
            x = block(skips[-(i + 2)], x)
        return F.relu(self.conv_final(x))
