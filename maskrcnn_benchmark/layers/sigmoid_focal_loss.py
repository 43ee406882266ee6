"""Sigmoid focal losses: the class-index one of the official compiled kernel, and the binary token one."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import dispatchable

# log(FLT_MIN): the kernel takes log(max(p, FLT_MIN)) for the positive term.
_LOG_FLT_MIN = math.log(torch.finfo(torch.float32).tiny)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Element-wise focal loss (N, C) with the official CUDA kernel's semantics.

    targets (N,) are 1-based class indices: column c is positive when targets == c + 1, negative for every other
    column when targets >= 0 (0 = background), and ignored entirely when targets < 0.
    positive: -alpha * (1 - p)^gamma * log(max(p, FLT_MIN)); negative: -(1 - alpha) * p^gamma * log(1 - p),
    with log(1 - p) = -softplus(x) evaluated stably as in the kernel.
    """
    if logits.dim() != 2 or targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected logits (N, C) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    num_classes = logits.shape[1]
    class_ids = torch.arange(1, num_classes + 1, dtype=targets.dtype, device=targets.device)
    targets = targets.unsqueeze(1)
    is_pos = (targets == class_ids).to(logits.dtype)
    is_neg = ((targets != class_ids) & (targets >= 0)).to(logits.dtype)

    p = torch.sigmoid(logits)
    log_p = F.logsigmoid(logits)
    # Clamped value like the kernel, gradient of the unclamped log like the kernel's analytic backward.
    log_p = log_p + (log_p.clamp(min=_LOG_FLT_MIN) - log_p).detach()
    log_one_minus_p = -F.softplus(logits)
    pos_term = (1 - p) ** gamma * log_p
    neg_term = p**gamma * log_one_minus_p
    return -is_pos * pos_term * alpha - is_neg * neg_term * (1 - alpha)


class SigmoidFocalLoss(nn.Module):
    """Summed focal loss over (N, C) logits and 1-based class-index targets (0 = background, < 0 = ignored)."""

    def __init__(self, gamma: float, alpha: float) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum of the element-wise losses."""
        return sigmoid_focal_loss(logits, targets, self.gamma, self.alpha).sum()

    def extra_repr(self) -> str:
        """Constructor arguments, for print(module)."""
        return f"gamma={self.gamma}, alpha={self.alpha}"


@dispatchable("token_sigmoid_focal_loss")
def token_sigmoid_binary_focal_loss(
    pred_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    gamma: float,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary sigmoid focal loss per (anchor, token), as in the official dot-product token loss.

    pred_logits, targets: (B, A, T), targets in {0, 1}. With text_mask (B, T), only the tokens with mask > 0 are
    kept (masked_select), so the result is 1D; otherwise it has the input shape. alpha < 0 disables the weighting.
    """
    if pred_logits.dim() != 3 or targets.dim() != 3:
        raise ValueError(
            f"expected 3D logits and targets (B, A, T), got {tuple(pred_logits.shape)} and {tuple(targets.shape)}"
        )
    if text_mask is not None:
        if text_mask.dim() != 2:
            raise ValueError(f"expected a 2D text mask (B, T), got shape {tuple(text_mask.shape)}")
        token_mask = (text_mask > 0).unsqueeze(1).expand(-1, pred_logits.shape[1], -1)
        pred_logits = torch.masked_select(pred_logits, token_mask)
        targets = torch.masked_select(targets, token_mask)

    p = torch.sigmoid(pred_logits)
    ce_loss = F.binary_cross_entropy_with_logits(pred_logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * (1 - p_t) ** gamma
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


class TokenSigmoidFocalLoss(nn.Module):
    """Summed binary token focal loss (see token_sigmoid_binary_focal_loss)."""

    def __init__(self, alpha: float, gamma: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        text_masks: torch.Tensor | None = None,
        version: str = "binary",
    ) -> torch.Tensor:
        """Sum of the element-wise losses; only the official "binary" version is used by GLIP."""
        if version != "binary":
            raise NotImplementedError(f"only the 'binary' token focal loss is implemented, got {version!r}")
        return token_sigmoid_binary_focal_loss(logits, targets, self.alpha, self.gamma, text_masks).sum()

    def extra_repr(self) -> str:
        """Constructor arguments, for print(module)."""
        return f"alpha={self.alpha}, gamma={self.gamma}"
