"""Mamba (S6) layers with mamba-ssm's parameter names, shapes, defaults and initialisation.

A state dict saved from ``mamba_ssm.modules.mamba_simple.Mamba`` / ``Block`` (v1 layout, as vendored by
PointMamba / PoinTramba / Vim) loads here without renaming:

* :class:`Mamba` — ``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj``; the scan goes through
  :func:`zoo.ops.selective_scan.selective_scan_fn` (Triton on GPU, chunked PyTorch on CPU).
* :class:`Block` — "Add -> Norm -> Mixer" with PointMamba's drop path; :func:`create_block` builds it.
* :class:`RMSNorm` (parameter ``weight``), :class:`MixerModel` (``layers.N.*`` + ``norm_f``), :class:`InferenceParams`
  and :func:`init_weights` (the GPT-2 style re-initialisation mamba-ssm applies to a stack).

Deviations from mamba-ssm, on purpose: no ``causal_conv1d`` / fused ``mamba_inner_fn`` (the conv is
``F.conv1d`` and ``use_fast_path`` is accepted but only selects nothing); ``fused_add_norm=True`` runs the same
math unfused (identical results up to rounding) instead of requiring the Triton layer-norm kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.layers.drop import DropPath
from zoo.layers.features import feature_take_indices
from zoo.ops.selective_scan import selective_scan_fn

__all__ = ["InferenceParams", "Mamba", "RMSNorm", "Block", "create_block", "MixerModel", "init_weights"]


@dataclass
class InferenceParams:
    """Recurrent-inference state, mamba-ssm's convention: ``key_value_memory_dict[layer_idx] = (conv, ssm)``.

    ``seqlen_offset`` is the number of tokens already consumed; when > 0, :meth:`Mamba.forward` takes one token
    per call through :meth:`Mamba.step`.
    """

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: Optional[Tensor] = None

    def reset(self, max_seqlen: int, max_batch_size: int) -> None:
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


class Mamba(nn.Module):
    """Mamba mixer (selective SSM block): ``(B, L, d_model) -> (B, L, d_model)``.

    ``d_inner = expand * d_model``; ``dt_rank = ceil(d_model / 16)`` when ``"auto"``. Parameters (mamba-ssm names):
    ``in_proj`` ``(2 d_inner, d_model)``, ``conv1d`` depthwise ``(d_inner, 1, d_conv)``, ``x_proj``
    ``(dt_rank + 2 d_state, d_inner)``, ``dt_proj`` ``(d_inner, dt_rank)`` + bias, ``A_log`` ``(d_inner, d_state)``
    fp32, ``D`` ``(d_inner,)`` fp32, ``out_proj`` ``(d_model, d_inner)``.
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False, use_fast_path=True,
                 layer_idx=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path  # kept for API compatibility; there is one path here
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection: keep the variance of dt at init
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError(f"Mamba: dt_init must be 'random' or 'constant'; got {dt_init!r}")
        # dt bias so that softplus(bias) is log-uniform in [dt_min, dt_max]: bias = softplus^-1(dt)
        dt = torch.exp(torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True  # init_weights() zeroes Linear biases except this one

        # S4D-real initialisation, A = -(1..N) per channel; kept in fp32
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # fp32
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    # -- full sequence ---------------------------------------------------------------------------------------
    def forward(self, hidden_states: Tensor, inference_params: Optional[InferenceParams] = None) -> Tensor:
        """``(B, L, d_model) -> (B, L, d_model)``. With ``inference_params`` the conv/SSM states are cached; once
        ``seqlen_offset > 0`` each call consumes one token (``L == 1``) through :meth:`step`."""
        batch, seqlen, dim = hidden_states.shape
        if dim != self.d_model:
            raise ValueError(f"Mamba: hidden_states must be (B, L, d_model={self.d_model}); "
                             f"got {tuple(hidden_states.shape)}")
        conv_state, ssm_state = None, None
        if inference_params is not None:
            conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                out, _, _ = self.step(hidden_states, conv_state, ssm_state)  # states updated in place
                return out

        # in_proj as W @ x^T: the result is (2 d_inner, B*L), viewed as (B, 2 d_inner, L) with L contiguous
        xz = (self.in_proj.weight @ hidden_states.reshape(batch * seqlen, dim).t())
        xz = xz.view(-1, batch, seqlen).permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        x, z = xz.chunk(2, dim=1)
        if conv_state is not None:
            # F.pad pads with zeros when seqlen < d_conv and truncates otherwise
            conv_state.copy_(F.pad(x, (self.d_conv - x.shape[-1], 0)))
        x = self.act(self.conv1d(x)[..., :seqlen])  # causal depthwise conv, (B, d_inner, L)

        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, self.d_inner))  # (B*L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).view(self.d_inner, batch, seqlen).permute(1, 0, 2)  # bias in the scan
        B = B.view(batch, seqlen, self.d_state).transpose(1, 2).contiguous()  # (B, N, L)
        C = C.view(batch, seqlen, self.d_state).transpose(1, 2).contiguous()
        y = selective_scan_fn(x, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                              delta_softplus=True, return_last_state=ssm_state is not None)
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    # -- one token ---------------------------------------------------------------------------------------------
    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor):
        """One decoding step: ``(B, 1, d_model)`` -> ``((B, 1, d_model), conv_state, ssm_state)``.

        ``conv_state`` ``(B, d_inner, d_conv)`` and ``ssm_state`` ``(B, d_inner, d_state)`` are updated in place.
        """
        dtype = hidden_states.dtype
        if hidden_states.shape[1] != 1:
            raise ValueError(f"Mamba.step: decodes one token at a time, hidden_states must be (B, 1, d_model); "
                             f"got {tuple(hidden_states.shape)}")
        xz = self.in_proj(hidden_states.squeeze(1))  # (B, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = torch.sum(conv_state * self.conv1d.weight[:, 0], dim=-1)  # (B, d_inner)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = self.act(x).to(dtype=dtype)

        x_db = self.x_proj(x)
        dt, B, C = torch.split(x_db, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # bias added below, as in the scan
        A = -torch.exp(self.A_log.float())
        dt = F.softplus(dt + self.dt_proj.bias.to(dtype=dt.dtype))
        dA = torch.exp(torch.einsum("bd,dn->bdn", dt, A))
        dB = torch.einsum("bd,bn->bdn", dt, B)
        ssm_state.copy_(ssm_state * dA + x.unsqueeze(-1) * dB)
        y = torch.einsum("bdn,bn->bd", ssm_state.to(dtype), C)
        y = y + self.D.to(dtype) * x
        y = y * self.act(z)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None, **kwargs):
        """Zero states ``(conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state))``."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype)
        ssm_dtype = self.dt_proj.weight.dtype if dtype is None else dtype
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(self, inference_params: InferenceParams, batch_size: int, initialize_states=False):
        if self.layer_idx is None:
            raise ValueError("Mamba: recurrent inference needs layer_idx (the key into "
                             "inference_params.key_value_memory_dict); build the layer with layer_idx=...")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self.allocate_inference_cache(batch_size, inference_params.max_seqlen)
        conv_state, ssm_state = cache[self.layer_idx]
        if initialize_states:
            conv_state.zero_()
            ssm_state.zero_()
        return conv_state, ssm_state


class RMSNorm(nn.Module):
    """RMS normalisation ``x / sqrt(mean(x^2) + eps) * weight`` over the last dim (mamba-ssm's ``weight``, no bias).

    ``forward(x, residual=None, prenorm=False, residual_in_fp32=False)`` follows mamba-ssm's ``RMSNorm``: with a
    residual it normalises ``x + residual`` and, with ``prenorm``, also returns that sum. Math in fp32.
    """

    def __init__(self, hidden_size, eps=1e-5, dropout_p=0.0, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.drop = nn.Dropout(dropout_p) if dropout_p > 0.0 else None
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        dtype = x.dtype
        if self.drop is not None:
            x = self.drop(x)
        if residual is not None:
            x = (x.float() + residual.float()).to(dtype if not residual_in_fp32 else torch.float32)
        res = x.float() if residual_in_fp32 else x
        xf = x.float()
        out = (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(dtype)
        return (out, res) if prenorm else out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Block(nn.Module):
    """mamba-ssm v1 block, "Add -> Norm -> Mixer", with PointMamba/PoinTramba's drop path.

    ``forward(hidden_states, residual=None) -> (mixer_out, residual)``, all ``(B, L, dim)``:
    ``residual = drop_path(hidden_states) + residual`` (just ``hidden_states`` for the first block, where
    ``residual`` is None); ``mixer_out = mixer(norm(residual))``. The drop path thus hits the previous mixer's
    output as it enters the residual stream, as in PointMamba. ``fused_add_norm=True`` is accepted and computes
    the same thing unfused.
    """

    def __init__(self, dim, mixer_cls, norm_cls=nn.LayerNorm, fused_add_norm=False, residual_in_fp32=False,
                 drop_path=0.0):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.mixer = mixer_cls(dim)
        self.norm = norm_cls(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if fused_add_norm and not isinstance(self.norm, (nn.LayerNorm, RMSNorm)):
            raise TypeError(f"Block: fused_add_norm supports nn.LayerNorm and RMSNorm; got {type(self.norm).__name__}")

    def forward(self, hidden_states: Tensor, residual: Optional[Tensor] = None, inference_params=None):
        residual = hidden_states if residual is None else self.drop_path(hidden_states) + residual
        hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        hidden_states = self.mixer(hidden_states, inference_params=inference_params)
        return hidden_states, residual

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)


def create_block(d_model, ssm_cfg=None, norm_epsilon=1e-5, rms_norm=False, residual_in_fp32=False,
                 fused_add_norm=False, layer_idx=None, drop_path=0.0, device=None, dtype=None) -> Block:
    """A :class:`Block` around a :class:`Mamba` mixer (``ssm_cfg`` are its keyword arguments) and a LayerNorm or
    RMSNorm — mamba-ssm v1 / PointMamba's ``create_block``; keys ``mixer.*`` and ``norm.*``."""
    factory_kwargs = {"device": device, "dtype": dtype}
    mixer_cls = partial(Mamba, layer_idx=layer_idx, **(ssm_cfg or {}), **factory_kwargs)
    norm_cls = partial(RMSNorm if rms_norm else nn.LayerNorm, eps=norm_epsilon, **factory_kwargs)
    block = Block(d_model, mixer_cls, norm_cls=norm_cls, fused_add_norm=fused_add_norm,
                  residual_in_fp32=residual_in_fp32, drop_path=drop_path)
    block.layer_idx = layer_idx
    return block


def init_weights(module, n_layer, initializer_range=0.02, rescale_prenorm_residual=True, n_residuals_per_layer=1):
    """mamba-ssm's ``_init_weights`` (use with ``model.apply(partial(init_weights, n_layer=...))``): zero Linear
    biases (except those marked ``_no_reinit``), normal-init embeddings, and re-init ``out_proj.weight`` /
    ``fc2.weight`` with kaiming-uniform scaled by ``1/sqrt(n_residuals_per_layer * n_layer)`` (GPT-2 scheme)."""
    if isinstance(module, nn.Linear):
        if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    if rescale_prenorm_residual:
        for name, p in module.named_parameters():
            if name in ("out_proj.weight", "fc2.weight"):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n_residuals_per_layer * n_layer)


class MixerModel(nn.Module):
    """A stack of Mamba blocks and a final norm, PoinTramba/PointMamba's ``MixerModel`` (no token embedding).

    ``forward(hidden_states (B, L, d_model), pos=None) -> (B, L, d_model)``; ``pos`` (same shape) is added
    first. :meth:`forward_intermediates` also returns per-layer features. Keys: ``layers.N.{mixer,norm}.*`` and
    ``norm_f.*``. ``drop_path`` is the per-block rate; ``drop_out_in_block`` a dropout on every block output.
    """

    def __init__(self, d_model, n_layer, ssm_cfg=None, norm_epsilon=1e-5, rms_norm=False, initializer_cfg=None,
                 fused_add_norm=False, residual_in_fp32=False, drop_out_in_block=0.0, drop_path=0.1, device=None,
                 dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.layers = nn.ModuleList([
            create_block(d_model, ssm_cfg=ssm_cfg, norm_epsilon=norm_epsilon, rms_norm=rms_norm,
                         residual_in_fp32=residual_in_fp32, fused_add_norm=fused_add_norm, layer_idx=i,
                         drop_path=drop_path, **factory_kwargs)
            for i in range(n_layer)
        ])
        self.norm_f = (RMSNorm if rms_norm else nn.LayerNorm)(d_model, eps=norm_epsilon, **factory_kwargs)
        self.apply(partial(init_weights, n_layer=n_layer, **(initializer_cfg or {})))
        self.drop_out_in_block = nn.Dropout(drop_out_in_block) if drop_out_in_block > 0.0 else nn.Identity()

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return {i: layer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
                for i, layer in enumerate(self.layers)}

    def _normed_stream(self, hidden_states: Tensor, residual: Optional[Tensor]) -> Tensor:
        """``norm_f(hidden_states + residual)``: the residual stream after a layer, through the final norm."""
        residual = hidden_states + residual if residual is not None else hidden_states
        return self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))

    def forward_intermediates(self, hidden_states: Tensor, pos: Optional[Tensor] = None,
                              indices: Optional[Sequence[int]] = None, stop_early: bool = False,
                              intermediates_only: bool = False, inference_params=None):
        """Per-layer features of the stack, ``(B, L, d_model)`` each.

        The feature of layer ``i`` is ``norm_f(hidden_states_i + residual_i)``: the residual stream after layer
        ``i`` (its mixer output added) through the shared final norm ``norm_f`` -- exactly what the official
        PoinTramba part-segmentation model collects per layer (``MixerModelForSegmentation``, ``fetch_idx``),
        and what :meth:`forward` returns for the last layer.

        Args:
            indices: layer indices (negative from the end) to return, in order; ``None``: all layers.
            stop_early: run the layers only up to the largest requested index (the final output is then the
                last layer run, normed).
            intermediates_only: return just the list.

        Returns ``(final (B, L, d_model), [features])``, or the list with ``intermediates_only``.
        """
        take, _ = feature_take_indices(len(self.layers), indices)
        wanted = set(take)
        layers = self.layers
        if stop_early and take:
            layers = layers[:max(take) + 1]
        if pos is not None:
            hidden_states = hidden_states + pos
        residual = None
        feats: dict[int, Tensor] = {}
        for i, layer in enumerate(layers):
            hidden_states, residual = layer(hidden_states, residual, inference_params=inference_params)
            hidden_states = self.drop_out_in_block(hidden_states)
            if i in wanted:
                feats[i] = self._normed_stream(hidden_states, residual)
        intermediates = [feats[i] for i in take]
        if intermediates_only:
            return intermediates
        return self._normed_stream(hidden_states, residual), intermediates

    def forward(self, hidden_states: Tensor, pos: Optional[Tensor] = None, inference_params=None) -> Tensor:
        if pos is not None:
            hidden_states = hidden_states + pos
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual, inference_params=inference_params)
            hidden_states = self.drop_out_in_block(hidden_states)
        return self._normed_stream(hidden_states, residual)
