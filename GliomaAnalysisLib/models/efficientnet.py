"""2D EfficientNet: a port of MONAI's ``monai.networks.nets.EfficientNet`` (MONAI 1.x, Apache-2.0), so that the
classifiers do not import MONAI (~2 s) just to build it.

Only what the MGMT and slice-grade classifiers use, for ``spatial_dims=2``: block strings such as
"r1_k3_s11_e1_i32_o16_se0.25", width/depth scaling, TensorFlow-style static "same" padding computed for
``image_size``, MBConv blocks with squeeze-excitation, batch / group / instance norms, swish (``x * sigmoid(x)``),
drop-connect in training, stem -> blocks -> head -> average pool -> dropout -> ``_fc``.

Module names, module creation order (hence the random init for a given seed), weight initialisation and the forward
pass are MONAI's, so weights trained with MONAI's class load with ``strict=True`` and give the same outputs
(Testing/models/test_efficientnet.py compares the two).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

NormSpec = Union[str, Tuple[str, Dict[str, Any]]]
"""A norm as MONAI names it: "batch", "instance", "group" (needs num_groups), or (name, keyword arguments)."""
BATCH_NORM: NormSpec = ("batch", {"eps": 1e-3, "momentum": 0.01})
B0_BLOCKS: Tuple[str, ...] = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)
"""EfficientNet-b0 block arguments (r: repeats, k: kernel, s: stride, e: expansion, i/o: channels, se: SE ratio)."""


class BlockArgs(NamedTuple):
    """One stage of MBConv blocks, decoded from a block string."""

    num_repeat: int
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int
    id_skip: bool
    se_ratio: Optional[float] = None

    @staticmethod
    def from_string(block: str) -> "BlockArgs":
        """"r2_k3_s22_e6_i16_o24_se0.25" -> BlockArgs; "_noskip" disables the residual connection."""
        options = {}
        for op in block.split("_"):
            parts = re.split(r"(\d.*)", op)
            if len(parts) >= 2:
                options[parts[0]] = parts[1]
        stride = options.get("s", "")
        if not stride or len(stride) > 3 or len(set(stride)) != 1:
            raise ValueError(f"{block}: invalid stride option (need e.g. s11 or s22)")
        return BlockArgs(num_repeat=int(options["r"]), kernel_size=int(options["k"]), stride=int(stride[0]),
                         expand_ratio=int(options["e"]), input_filters=int(options["i"]),
                         output_filters=int(options["o"]), id_skip="noskip" not in block,
                         se_ratio=float(options["se"]) if "se" in options else None)


def round_filters(filters: int, width_coefficient: Optional[float], depth_divisor: int = 8) -> int:
    """Channels scaled by ``width_coefficient``, rounded to a multiple of ``depth_divisor`` (never down by > 10%)."""
    if not width_coefficient:
        return filters
    scaled = filters * width_coefficient
    rounded = max(depth_divisor, int(scaled + depth_divisor / 2) // depth_divisor * depth_divisor)
    if rounded < 0.9 * scaled:
        rounded += depth_divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: Optional[float]) -> int:
    """Repeats scaled by ``depth_coefficient``, rounded up."""
    return repeats if not depth_coefficient else int(math.ceil(depth_coefficient * repeats))


def output_size(size: Sequence[int], stride: int) -> List[int]:
    """Spatial size after a "same"-padded convolution with ``stride``."""
    return [int(math.ceil(s / stride)) for s in size]


def same_padder(conv: nn.Conv2d, size: Sequence[int]) -> nn.Module:
    """Static TensorFlow "same" padding of ``conv`` for an input of ``size`` (H, W): a ``ConstantPad2d`` (the extra
    pixel of an odd total goes to the right / bottom), or ``Identity`` when none is needed."""
    totals = [max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
              for i, k, d, s in zip(size, conv.kernel_size, conv.dilation, conv.stride)]
    padding = [side for total in reversed(totals) for side in (total // 2, total - total // 2)]  # (l, r, t, b)
    return nn.ConstantPad2d(tuple(padding), 0.0) if sum(padding) > 0 else nn.Identity()


def norm_layer(norm: NormSpec, channels: int) -> nn.Module:
    """The 2D norm MONAI's ``get_norm_layer(norm, spatial_dims=2, channels=channels)`` creates."""
    name, kwargs = (norm, {}) if isinstance(norm, str) else (norm[0], dict(norm[1]))
    name = name.lower()
    if name == "batch":
        return nn.BatchNorm2d(**{"num_features": channels, **kwargs})
    if name == "instance":
        return nn.InstanceNorm2d(**{"num_features": channels, **kwargs})
    if name == "group":
        return nn.GroupNorm(**{"num_channels": channels, **kwargs})
    raise ValueError(f"unsupported norm {norm!r}: use 'batch', 'instance' or ('group', {{'num_groups': n}})")


class MemoryEfficientSwish(nn.Module):
    """Swish x * sigmoid(x) (``torch.nn.functional.silu``), optionally in place; any shape."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=self.inplace)


def drop_connect(inputs: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, zero whole samples of ``inputs`` (B, C, H, W) with probability ``p`` and scale
    the others by 1 / (1 - p); the identity otherwise."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"p must be in range of [0, 1], found {p}")
    if not training:
        return inputs
    keep = 1 - p
    random = torch.rand([inputs.shape[0], 1] + [1] * (inputs.dim() - 2), dtype=inputs.dtype, device=inputs.device)
    random += keep
    return inputs / keep * torch.floor(random)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: [1x1 expand -> norm -> swish] -> depthwise kxk -> norm -> swish -> [SE] -> 1x1
    project -> norm [-> drop-connect + residual]. (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, image_size: List[int],
                 expand_ratio: int, se_ratio: Optional[float], id_skip: bool = True, norm: NormSpec = BATCH_NORM,
                 drop_connect_rate: Optional[float] = 0.2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.id_skip = id_skip
        self.stride = stride
        self.expand_ratio = expand_ratio
        self.drop_connect_rate = drop_connect_rate
        self.has_se = se_ratio is not None and 0.0 < se_ratio <= 1.0

        channels = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv: nn.Module = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
            self._expand_conv_padding = same_padder(self._expand_conv, image_size)
            self._bn0 = norm_layer(norm, channels)
        else:  # MONAI keeps the names (Identity) so TorchScript sees the attributes
            self._expand_conv, self._expand_conv_padding, self._bn0 = nn.Identity(), nn.Identity(), nn.Identity()

        self._depthwise_conv = nn.Conv2d(channels, channels, groups=channels, kernel_size=kernel_size, stride=stride,
                                         bias=False)
        self._depthwise_conv_padding = same_padder(self._depthwise_conv, image_size)
        self._bn1 = norm_layer(norm, channels)
        image_size = output_size(image_size, stride)

        if self.has_se:
            self._se_adaptpool = nn.AdaptiveAvgPool2d(1)
            squeezed = max(1, int(in_channels * se_ratio))
            self._se_reduce = nn.Conv2d(channels, squeezed, kernel_size=1)
            self._se_reduce_padding = same_padder(self._se_reduce, [1, 1])
            self._se_expand = nn.Conv2d(squeezed, channels, kernel_size=1)
            self._se_expand_padding = same_padder(self._se_expand, [1, 1])

        self._project_conv = nn.Conv2d(channels, out_channels, kernel_size=1, bias=False)
        self._project_conv_padding = same_padder(self._project_conv, image_size)
        self._bn2 = norm_layer(norm, out_channels)
        self._swish = MemoryEfficientSwish(inplace=True)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        x = inputs
        if self.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(self._expand_conv_padding(x))))
        x = self._swish(self._bn1(self._depthwise_conv(self._depthwise_conv_padding(x))))
        if self.has_se:
            squeezed = self._se_reduce(self._se_reduce_padding(self._se_adaptpool(x)))
            squeezed = self._se_expand(self._se_expand_padding(self._swish(squeezed)))
            x = torch.sigmoid(squeezed) * x
        x = self._bn2(self._project_conv(self._project_conv_padding(x)))
        if self.id_skip and self.stride == 1 and self.in_channels == self.out_channels:
            if self.drop_connect_rate:
                x = drop_connect(x, p=self.drop_connect_rate, training=self.training)
            x = x + inputs
        return x


class EfficientNet(nn.Module):
    """MONAI's ``EfficientNet(blocks, spatial_dims=2, ...)``: (B, in_channels, H, W) -> (B, num_classes).

    ``image_size`` fixes the static "same" padding (inputs of another size still run, padded as for this one).
    """

    def __init__(self, blocks_args_str: Sequence[str], in_channels: int = 3, num_classes: int = 1000,
                 width_coefficient: float = 1.0, depth_coefficient: float = 1.0, dropout_rate: float = 0.2,
                 image_size: int = 224, norm: NormSpec = BATCH_NORM, drop_connect_rate: float = 0.2,
                 depth_divisor: int = 8) -> None:
        super().__init__()
        if not blocks_args_str:
            raise ValueError("block_args must be non-empty")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.drop_connect_rate = drop_connect_rate
        size = [image_size, image_size]

        channels = round_filters(32, width_coefficient, depth_divisor)
        self._conv_stem = nn.Conv2d(in_channels, channels, kernel_size=3, stride=2, bias=False)
        self._conv_stem_padding = same_padder(self._conv_stem, size)
        self._bn0 = norm_layer(norm, channels)
        size = output_size(size, 2)

        stages = [BlockArgs.from_string(s) for s in blocks_args_str]
        stages = [a._replace(input_filters=round_filters(a.input_filters, width_coefficient, depth_divisor),
                             output_filters=round_filters(a.output_filters, width_coefficient, depth_divisor),
                             num_repeat=round_repeats(a.num_repeat, depth_coefficient)) for a in stages]
        self._blocks_args = stages
        num_blocks = sum(a.num_repeat for a in stages)

        # module names _blocks.<stage>.<block index counted over all stages>
        self._blocks = nn.Sequential()
        index = 0
        for stage, args in enumerate(stages):
            sub_stack = nn.Sequential()
            for repeat in range(args.num_repeat):
                rate = drop_connect_rate * float(index) / num_blocks if drop_connect_rate else drop_connect_rate
                sub_stack.add_module(str(index), MBConvBlock(
                    args.input_filters, args.output_filters, args.kernel_size, args.stride, size, args.expand_ratio,
                    args.se_ratio, args.id_skip, norm, rate))
                index += 1
                if repeat == 0:  # the first block of a stage strides and changes the width, the others keep them
                    size = output_size(size, args.stride)
                    args = args._replace(input_filters=args.output_filters, stride=1)
            self._blocks.add_module(str(stage), sub_stack)

        channels = round_filters(1280, width_coefficient, depth_divisor)
        self._conv_head = nn.Conv2d(stages[-1].output_filters, channels, kernel_size=1, bias=False)
        self._conv_head_padding = same_padder(self._conv_head, size)
        self._bn1 = norm_layer(norm, channels)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout_rate)
        self._fc = nn.Linear(channels, num_classes)
        self._swish = MemoryEfficientSwish()
        self._initialize_weights()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, num_classes)."""
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(inputs))))
        x = self._blocks(x)
        x = self._swish(self._bn1(self._conv_head(self._conv_head_padding(x))))
        x = self._avg_pooling(x).flatten(start_dim=1)
        return self._fc(self._dropout(x))

    def _initialize_weights(self) -> None:
        """TensorFlow EfficientNet init, as MONAI: conv N(0, 2 / fan_out), batch norm 1 / 0, linear
        U(+-1 / sqrt(out_features)), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1.0)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.size(0))
                m.weight.data.uniform_(-bound, bound)
                m.bias.data.zero_()
