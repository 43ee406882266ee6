"""Swin Transformer (v1) image encoder, as GLIP's `backbone.body`."""
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from maskrcnn_benchmark.layers.execution_plan import UsesExecutionPlan

STAGE_NAMES = ("stage2", "stage3", "stage4", "stage5")
# Tokens per chunk of the inference-time MLP (bounds the memory of its hidden activations), in plans that chunk.
MLP_CHUNK = 8192
# Windows per chunk of the inference-time window attention (bounds the memory of its qkv and bias tensors), in
# plans that chunk.
WINDOW_CHUNK = 256


def trunc_normal_inverse_cdf_(tensor: torch.Tensor, std: float, bound: float = 2.0) -> torch.Tensor:
    """Fill with N(0, std^2) truncated to [-bound, bound] by inverse-CDF sampling (timm's scheme).

    torch.nn.init.trunc_normal_ now uses rejection sampling, which draws different random numbers; this keeps
    seeded initialisations identical to the official model's.
    """
    cdf_high = (1.0 + math.erf(bound / std / math.sqrt(2.0))) / 2.0
    with torch.no_grad():
        tensor.uniform_(1.0 - 2.0 * cdf_high, 2.0 * cdf_high - 1.0).erfinv_()
        return tensor.mul_(std * math.sqrt(2.0)).clamp_(-bound, bound)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split (B, H, W, C) into (B * num_windows, window_size * window_size, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * num_windows, window_size**2, C) back to (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) index into the (2w-1)^2 bias table for every pair of tokens of a window (N = w*w)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int,
                        device: torch.device) -> torch.Tensor:
    """(num_windows, N, N) additive mask: -100 between tokens that the cyclic shift brought from different regions."""
    # Each row (column) lies in one of three bands: [0, -window_size), [-window_size, -shift_size),
    # [-shift_size, end); a region is a (row band, column band) pair. Comparisons, not slice assignments: a band
    # is empty when the map is one window high, and an empty assignment breaks the ONNX exporter's shape inference.
    def bands(length: int) -> torch.Tensor:
        position = torch.arange(length, device=device)
        return (position >= length - window_size).long() + (position >= length - shift_size).long()

    region = (bands(height)[:, None] * 3 + bands(width)[None, :]).float()
    region = window_partition(region[None, :, :, None], window_size).squeeze(-1)
    different = region[:, None, :] != region[:, :, None]
    # The official mask is -100 (not -inf): masked pairs keep a tiny, non-zero softmax weight.
    return torch.zeros_like(different, dtype=torch.float32).masked_fill_(different, -100.0)


class Mlp(UsesExecutionPlan, nn.Module):
    """Two-layer GELU feed-forward network of a Swin block."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply fc1, GELU, fc2."""
        if not self.execution_plan.chunked_inference or torch.is_grad_enabled() or x.shape[-2] <= MLP_CHUNK:
            return self.fc2(self.act(self.fc1(x)))
        # Inference: tokens are independent, so only one chunk's (4x wider) hidden activations exist at a time.
        return torch.cat([self.fc2(self.act(self.fc1(chunk))) for chunk in x.split(MLP_CHUNK, dim=-2)], dim=-2)


class WindowAttention(UsesExecutionPlan, nn.Module):
    """Multi-head self-attention inside square windows, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        # Initialised after the linears, as the official constructor does (keeps seeded inits reproducible).
        trunc_normal_inverse_cdf_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(num_heads, N, N) bias added to the attention logits of every window."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within each window of (B * num_windows, N, C); `mask` is (num_windows, N, N) or None."""
        batch_windows = windows.shape[0]
        chunked = self.execution_plan.chunked_inference and not torch.is_grad_enabled()
        if not chunked or batch_windows <= WINDOW_CHUNK:
            return self._attend(windows, mask, 0)
        # Inference: windows are independent, so only one chunk's qkv and bias tensors exist at a time.
        return torch.cat([self._attend(windows[start:start + WINDOW_CHUNK], mask, start)
                          for start in range(0, batch_windows, WINDOW_CHUNK)])

    def _attend(self, windows: torch.Tensor, mask: torch.Tensor | None, first_window: int) -> torch.Tensor:
        """Attention of consecutive windows, the first being window `first_window` of the batch (for its mask)."""
        batch_windows, n, c = windows.shape
        q, k, v = self.qkv(windows).view(batch_windows, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias()[None]
        if mask is not None:
            # Window w of the batch is window w % num_windows of its image; fused attention kernels want 4-D
            # operands, so the per-window bias is tiled over the windows.
            index = torch.arange(first_window, first_window + batch_windows, device=mask.device) % mask.shape[0]
            bias = bias + mask[index][:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale).transpose(1, 2)
        if torch.compiler.is_exporting():
            # The CPU kernel's output is laid out so that this reshape traces as a view, which the ONNX exporter's
            # re-run with SDPA's generic layout cannot replay; an explicit copy traces on any layout.
            out = out.clone(memory_format=torch.contiguous_format)
        return self.proj(out.reshape(batch_windows, n, c))


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention block followed by a pre-norm MLP block."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        # Identity when the rate is 0, as officially: an active StochasticDepth would draw random numbers.
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """Transform tokens (B, H*W, C); `shift_mask` is the padded map's mask, used by shifted blocks only."""
        b, _, c = x.shape
        ws = self.window_size
        y = self.norm1(x).view(b, height, width, c)
        # Padding comes after norm1 with zeros; padded tokens take part in (unshifted) attention unmasked.
        pad_b, pad_r = (-height) % ws, (-width) % ws
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        padded_h, padded_w = height + pad_b, width + pad_r
        if self.shift_size:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        y = self.attn(window_partition(y, ws), shift_mask if self.shift_size else None)
        y = window_reverse(y, ws, padded_h, padded_w)
        if self.shift_size:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if pad_b or pad_r:
            y = y[:, :height, :width]
        x = x + self.drop_path(y.reshape(b, height * width, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the resolution: concatenate each 2x2 neighbourhood (zero-padding odd sizes), norm, project to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""
        b, _, c = x.shape
        x = x.view(b, height, width, c)
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # Channel order (0,0), (1,0), (0,1), (1,1) as (row, col) offsets, as the pretrained weights expect.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(UsesExecutionPlan, nn.Module):
    """One Swin stage: blocks alternating regular and shifted windows, then an optional PatchMerging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.0,
                 drop_path: Sequence[float] = (), downsample: bool = False, use_checkpoint: bool = False):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        drop_path = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size,
                                 mlp_ratio, drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Return (stage output, input of the next stage, next height, next width)."""
        ws = self.window_size
        shift_mask = None
        if len(self.blocks) > 1:  # only odd-numbered blocks shift
            shift_mask = shifted_window_mask(-(-height // ws) * ws, -(-width // ws) * ws, ws, self.shift_size,
                                             x.device)
        # The CPU plan always recomputes the blocks in backward when training: about 5% more time for the
        # step, and the largest activations of the model (stage 1 at 1/4 resolution) are not kept.
        forced = self.training and self.execution_plan.recompute_backbone
        recompute = (self.use_checkpoint or forced) and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, height, width, shift_mask, use_reentrant=False)
            else:
                x = block(x, height, width, shift_mask)
        if self.downsample is None:
            return x, x, height, width
        return x, self.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (strided conv) followed by LayerNorm; pads the image to the patch size."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Return tokens (B, H'*W', C) and the token grid size (H', W')."""
        h, w = images.shape[-2:]
        pad_b, pad_r = (-h) % self.patch_size, (-w) % self.patch_size
        if pad_b or pad_r:
            images = F.pad(images, (0, pad_r, 0, pad_b))
        x = self.proj(images)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class SwinTransformer(nn.Module):
    """Swin Transformer returning the normalised NCHW feature map of every requested stage (stride 4..32)."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 frozen_stages: int = -1, use_checkpoint: bool = False,
                 out_features: Sequence[str] = STAGE_NAMES, identity_first_norm: bool = True):
        super().__init__()
        self.frozen_stages = frozen_stages
        self.out_features = tuple(out_features)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        # Stochastic depth grows linearly over all blocks of all stages (plain numbers, computed on the CPU so
        # that the model also builds under `with torch.device("meta")`).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(BasicLayer(
                self.num_features[i], depth, num_heads[i], window_size, mlp_ratio,
                drop_path=rates[start:start + depth], downsample=i < len(depths) - 1,
                # Frozen stages are never checkpointed, as officially.
                use_checkpoint=use_checkpoint and i >= frozen_stages,
            ))
        for i, dim in enumerate(self.num_features):
            if STAGE_NAMES[i] in self.out_features:
                # The RETINANET variants leave the stride-4 output (unused by their FPN) unnormalised.
                norm = nn.Identity() if i == 0 and identity_first_norm else nn.LayerNorm(dim)
                self.add_module(f"norm{i}", norm)
        self._freeze_stages()

    def frozen_modules(self) -> list[nn.Module]:
        """Modules frozen by `frozen_stages`: the patch embedding (>= 0) and the first `frozen_stages - 1` stages."""
        modules = [self.patch_embed] if self.frozen_stages >= 0 else []
        return modules + list(self.layers[:max(self.frozen_stages - 1, 0)])

    def _freeze_stages(self) -> None:
        for module in self.frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> "SwinTransformer":
        """Set the mode but keep frozen stages in eval mode without gradients (no drop path there)."""
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the (B, C_i, H_i, W_i) outputs of the stages named in `out_features`, shallowest first."""
        x, height, width = self.patch_embed(images)
        outputs = []
        for i, layer in enumerate(self.layers):
            out, x, next_height, next_width = layer(x, height, width)
            if STAGE_NAMES[i] in self.out_features:
                out = getattr(self, f"norm{i}")(out)
                outputs.append(out.view(-1, height, width, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            height, width = next_height, next_width
        return outputs


def build_swint_backbone(cfg) -> SwinTransformer:
    """Swin Transformer from MODEL.SWINT and MODEL.BACKBONE (FREEZE_CONV_BODY_AT, USE_CHECKPOINT, OUT_FEATURES)."""
    swint = cfg.MODEL.SWINT
    return SwinTransformer(
        patch_size=4,
        in_chans=3,
        embed_dim=swint.EMBED_DIM,
        depths=tuple(swint.DEPTHS),
        num_heads=tuple(swint.NUM_HEADS),
        window_size=swint.WINDOW_SIZE,
        mlp_ratio=swint.MLP_RATIO,
        drop_path_rate=swint.DROP_PATH_RATE,
        frozen_stages=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT,
        use_checkpoint=cfg.MODEL.BACKBONE.USE_CHECKPOINT,
        out_features=tuple(cfg.MODEL.BACKBONE.OUT_FEATURES),
        identity_first_norm=cfg.MODEL.BACKBONE.CONV_BODY.endswith("RETINANET"),
    )
