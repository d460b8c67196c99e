"""NAFNet (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022): an image-to-image restoration net.

A U-Net of NAFBlocks: ``intro`` 3x3 conv -> encoder stages (NAFBlocks, then a 2x2 stride-2 conv doubling the
channels) -> middle blocks -> decoder stages (1x1 conv + PixelShuffle(2) halving the channels, add the encoder
skip, NAFBlocks) -> ``ending`` 3x3 conv -> global residual ``out = ending(...) + input``. Inputs are zero-padded on
the right/bottom to a multiple of ``2 ** len(enc_blk_nums)`` and the output is cropped back.

NAFBlock: ``LayerNorm2d -> conv1 1x1 (c->2c) -> conv2 3x3 depthwise -> SimpleGate (c) -> x * SCA(x) -> conv3 1x1``,
``y = inp + x * beta``; then ``LayerNorm2d -> conv4 1x1 (c->2c) -> SimpleGate -> conv5 1x1``, ``out = y + x * gamma``
(``beta``/``gamma`` start at zero, so every block starts as the identity). SCA = global average pool + 1x1 conv.

Module names and parameter shapes are the official ones (megvii-research/NAFNet ``NAFNet_arch.py``), so the
repository's ``.pth`` files (``{'params': state_dict}``) load strictly:
``create_model("nafnet_width64", checkpoint_path="NAFNet-SIDD-width64.pth")``.

TLC (Chu et al., "Revisiting Global Statistics Aggregation", test-time local statistics, the official
``NAFNetLocal``): ``tlc=True`` replaces each SCA's global pool by a local box average whose window is
``1.5 x`` the training patch at that block's scale (``train_size``), with replicate padding -- exactly the
official ``AvgPool2d(fast_imp=False)``; the official ``fast_imp=True`` approximation is not implemented.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.hub import PretrainedCfg, build_model_with_cfg
from zoo.models._contract import check_image_input
from zoo.registry import register_model

__all__ = ["NAFNet", "NAFBlock", "LayerNorm2d", "SimpleGate", "LocalAvgPool2d",
           "nafnet_width32", "nafnet_width64", "nafnet_gopro_width32", "nafnet_gopro_width64", "nafnet_tiny"]

_NAFNET_URL = "https://github.com/megvii-research/NAFNet"
_SIDD = dict(enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12, dec_blk_nums=(2, 2, 2, 2))
_GOPRO = dict(enc_blk_nums=(1, 1, 1, 28), middle_blk_num=1, dec_blk_nums=(1, 1, 1, 1))


def _cfg(notes: str, **kw: Any) -> PretrainedCfg:
    kw = dict(dict(input_size=(3, 256, 256), license="mit", paper="arXiv:2204.04676", origin_url=_NAFNET_URL), **kw)
    return PretrainedCfg(num_classes=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), notes=notes, **kw)


default_cfgs = {
    "nafnet_width32": _cfg("SIDD real denoising, width 32 (official NAFNet-SIDD-width32.pth: 39.97 dB / 0.960 "
                           "(3-D SSIM) on SIDD val). Load it with checkpoint_path=.", dataset="sidd"),
    "nafnet_width64": _cfg("SIDD real denoising, width 64 (official NAFNet-SIDD-width64.pth: 40.30 dB / 0.961). "
                           "Load it with checkpoint_path=.", dataset="sidd"),
    "nafnet_gopro_width32": _cfg("GoPro deblurring, width 32 (official NAFNet-GoPro-width32.pth: 32.87 dB / "
                                 "0.961); the official test uses TLC (tlc=True).", dataset="gopro"),
    "nafnet_gopro_width64": _cfg("GoPro deblurring, width 64 (official NAFNet-GoPro-width64.pth: 33.71 dB / "
                                 "0.967); the official test uses TLC (tlc=True).", dataset="gopro"),
    "nafnet_tiny": _cfg("Small CPU variant (width 16, enc [1,1,1], middle 1, dec [1,1,1], ~0.2M parameters) "
                        "for tests and the CoLoRA demo run. No weights shipped.", input_size=(3, 64, 64)),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel, ``(B, C, H, W) -> (B, C, H, W)``, eps 1e-6 (NAFNet's).

    The official code uses a hand-written autograd Function; this computes the same numbers with autograd.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them, ``(B, 2C, H, W) -> (B, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class LocalAvgPool2d(nn.Module):
    """TLC's local average, ``(B, C, H, W) -> (B, C, H, W)``: mean over a ``kernel_size`` window around each
    pixel (valid box sums from an integral image, then replicate padding back to ``H x W``); the global mean
    ``(B, C, 1, 1)`` when the window covers the whole input (as the official ``AvgPool2d``)."""

    def __init__(self, kernel_size: tuple[int, int]):
        super().__init__()
        self.kernel_size = (int(kernel_size[0]), int(kernel_size[1]))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.kernel_size[0] >= h and self.kernel_size[1] >= w:
            return F.adaptive_avg_pool2d(x, 1)
        k1, k2 = min(h, self.kernel_size[0]), min(w, self.kernel_size[1])
        s = F.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
        out = (s[:, :, k1:, k2:] + s[:, :, :-k1, :-k2] - s[:, :, :-k1, k2:] - s[:, :, k1:, :-k2]) / (k1 * k2)
        _h, _w = out.shape[-2:]
        pad = ((w - _w) // 2, (w - _w + 1) // 2, (h - _h) // 2, (h - _h + 1) // 2)
        return F.pad(out, pad, mode="replicate")


class NAFBlock(nn.Module):
    """One NAFBlock on ``c`` channels, ``(B, c, H, W) -> (B, c, H, W)`` (see the module doc)."""

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        dw = c * dw_expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.sg = SimpleGate()
        ffn = ffn_expand * c
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(self.norm1(inp)))
        x = self.sg(x)
        x = self.conv3(x * self.sca(x))
        y = inp + self.dropout1(x) * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + self.dropout2(x) * self.gamma


class NAFNet(nn.Module):
    """NAFNet restoration network, ``(B, img_channel, H, W) -> (B, img_channel, H, W)`` (any H, W >= 1).

    Args:
        img_channel: image channels (3 for RGB).
        width: channels of the first stage (doubled at every encoder stage).
        middle_blk_num: NAFBlocks at the lowest resolution.
        enc_blk_nums, dec_blk_nums: NAFBlocks per encoder / decoder stage (same length).
        drop_out_rate: dropout inside the blocks (0 in every official config).
        tlc: test-time local statistics (TLC): SCA pools become :class:`LocalAvgPool2d` windows of
            ``1.5 x train_size`` at their scale (used by the official GoPro tests).
        train_size: ``(H, W)`` of the training patches TLC scales its windows from (official: 256 x 256).

    Not a classifier: ``forward`` returns the restored image. ``forward_features`` gives the bottleneck
    features ``(B, width * 2**len(enc), H / 2**len(enc), W / 2**len(enc))`` of the padded input and
    ``forward_intermediates`` the encoder stage outputs (``feature_info``). ``auxiliary_losses()`` is empty.
    """

    num_classes = 0

    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = (), drop_out_rate: float = 0.0,
                 tlc: bool = False, train_size: tuple[int, int] = (256, 256)):
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(f"NAFNet needs as many decoder as encoder stages, got enc_blk_nums={list(enc_blk_nums)} "
                             f"and dec_blk_nums={list(dec_blk_nums)}")
        self.img_channel = int(img_channel)
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders, self.decoders, self.ups, self.downs = (nn.ModuleList() for _ in range(4))
        self.feature_info: list[dict] = []
        chan = width
        for i, num in enumerate(enc_blk_nums):
            self.encoders.append(nn.Sequential(*[NAFBlock(chan, drop_out_rate=drop_out_rate) for _ in range(num)]))
            self.feature_info.append(dict(module=f"encoders.{i}", num_chs=chan, reduction=2 ** i, fmt="NCHW"))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan, drop_out_rate=drop_out_rate) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan, drop_out_rate=drop_out_rate) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)
        self.num_features = width * self.padder_size
        self.tlc = False
        if tlc:
            self.enable_tlc(train_size)

    # -------------------------------------------------------------------------------------------- TLC
    def _block_levels(self):
        """``(level, block)`` for every NAFBlock (level = number of 2x downsamplings before it)."""
        for lv, stage in enumerate(self.encoders):
            for blk in stage:
                yield lv, blk
        for blk in self.middle_blks:
            yield len(self.encoders), blk
        for i, stage in enumerate(self.decoders):
            for blk in stage:
                yield len(self.encoders) - 1 - i, blk

    @torch.no_grad()
    def enable_tlc(self, train_size: tuple[int, int] = (256, 256), base_ratio: float = 1.5) -> None:
        """Switch every SCA to TLC local pooling: at level ``l`` the window is
        ``(train_h / 2**l) * int(base_ratio * train_h) // train_h`` (the official kernel rule, evaluated on the
        padded training patch) and likewise for the width."""
        th, tw = int(train_size[0]), int(train_size[1])
        bh, bw = int(th * base_ratio), int(tw * base_ratio)
        for lv, blk in self._block_levels():
            fh = -(-(-(-th // self.padder_size) * self.padder_size) // 2 ** lv)
            fw = -(-(-(-tw // self.padder_size) * self.padder_size) // 2 ** lv)
            blk.sca[0] = LocalAvgPool2d((fh * bh // th, fw * bw // tw))
        self.tlc = True

    def disable_tlc(self) -> None:
        """Back to global-average SCA (training mode of NAFNet)."""
        for _, blk in self._block_levels():
            blk.sca[0] = nn.AdaptiveAvgPool2d(1)
        self.tlc = False

    # -------------------------------------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self, "NAFNet", self.img_channel, match_dtype=False)

    def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad right/bottom to a multiple of ``2 ** len(encoders)``: ``(B, C, H, W) -> (B, C, H', W')``."""
        h, w = x.shape[-2:]
        ph = (self.padder_size - h % self.padder_size) % self.padder_size
        pw = (self.padder_size - w % self.padder_size) % self.padder_size
        return F.pad(x, (0, pw, 0, ph))

    def _encode(self, inp: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.intro(inp)
        encs = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            encs.append(x)
            x = down(x)
        return self.middle_blks(x), encs

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Restored image, ``(B, C, H, W) -> (B, C, H, W)``."""
        self._check_input(inp)
        h, w = inp.shape[-2:]
        inp = self.check_image_size(inp)
        x, encs = self._encode(inp)
        for decoder, up, skip in zip(self.decoders, self.ups, encs[::-1]):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return x[:, :, :h, :w]

    def forward_features(self, inp: torch.Tensor) -> torch.Tensor:
        """Bottleneck features of the padded input, ``(B, C, H, W) -> (B, num_features, H'/2**n, W'/2**n)``."""
        self._check_input(inp)
        return self._encode(self.check_image_size(inp))[0]

    def forward_intermediates(self, inp: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False, intermediates_only: bool = False):
        """Encoder stage outputs ``(B, width * 2**i, H'/2**i, W'/2**i)`` (timm's signature; ``norm`` and
        ``stop_early`` are accepted and change nothing); returns ``(bottleneck, [features])`` or the list."""
        from zoo.layers.features import feature_take_indices

        take, _ = feature_take_indices(len(self.encoders), indices)
        self._check_input(inp)
        x, encs = self._encode(self.check_image_size(inp))
        feats = [encs[i] for i in take]
        return feats if intermediates_only else (x, feats)

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """No auxiliary losses (always ``{}``)."""
        return {}


def _create(variant: str, pretrained: bool, model_args: dict, kwargs: dict) -> NAFNet:
    """Build ``variant``; a ``checkpoint_path`` (official ``.pth`` in BasicSR's ``{'params': sd}`` layout, which
    :func:`zoo.hub.clean_state_dict` unwraps, or our safetensors) loads strictly: the keys already match."""
    return build_model_with_cfg(NAFNet, variant, pretrained, **dict(model_args, **kwargs))


@register_model
def nafnet_width32(pretrained: bool = False, **kwargs) -> NAFNet:
    """NAFNet SIDD configuration, width 32 (enc [2,2,4,8], middle 12, dec [2,2,2,2]; 29.1M parameters)."""
    return _create("nafnet_width32", pretrained, dict(width=32, **_SIDD), kwargs)


@register_model
def nafnet_width64(pretrained: bool = False, **kwargs) -> NAFNet:
    """NAFNet SIDD configuration, width 64 (enc [2,2,4,8], middle 12, dec [2,2,2,2]; 116M parameters)."""
    return _create("nafnet_width64", pretrained, dict(width=64, **_SIDD), kwargs)


@register_model
def nafnet_gopro_width32(pretrained: bool = False, **kwargs) -> NAFNet:
    """NAFNet GoPro configuration, width 32 (enc [1,1,1,28], middle 1, dec [1,1,1,1]); ``tlc=True`` for the
    official test-time local statistics."""
    return _create("nafnet_gopro_width32", pretrained, dict(width=32, **_GOPRO), kwargs)


@register_model
def nafnet_gopro_width64(pretrained: bool = False, **kwargs) -> NAFNet:
    """NAFNet GoPro configuration, width 64 (enc [1,1,1,28], middle 1, dec [1,1,1,1]); ``tlc=True`` for TLC."""
    return _create("nafnet_gopro_width64", pretrained, dict(width=64, **_GOPRO), kwargs)


@register_model
def nafnet_tiny(pretrained: bool = False, **kwargs) -> NAFNet:
    """Small CPU NAFNet: width 16, enc [1,1,1], middle 1, dec [1,1,1]."""
    return _create("nafnet_tiny", pretrained, dict(width=16, enc_blk_nums=(1, 1, 1), middle_blk_num=1,
                                                   dec_blk_nums=(1, 1, 1)), kwargs)
