"""RealDPO objectives as plain functions of per-sample errors (DESIGN §1).

Every function takes the weighted squared errors `E` that `ModelSpec.per_sample_error` returns, so it is the same
for v-prediction and flow matching. Shapes: winners `[B]`, losers `[B, K]`. Lower error means higher implicit
reward: the reward of a sample under the policy is `-(beta/2) * (E_policy - E_ref)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_TYPES = ("dpo", "ipo", "hinge")
OBJECTIVES = ("dpo", "sft", "dpo+sft", "ipo", "hinge")


def preference_diff(err_policy_w: torch.Tensor, err_ref_w: torch.Tensor, err_policy_l: torch.Tensor,
                    err_ref_l: torch.Tensor) -> torch.Tensor:
    """d_k = [E_θ(x_w) - E_ref(x_w)] - [E_θ(x_l^k) - E_ref(x_l^k)], shape [B, K]; d_k < 0 means the policy prefers the winner."""
    if err_policy_l.dim() != 2 or err_policy_w.shape != err_policy_l.shape[:1]:
        raise ValueError(f"expected winners [B] and losers [B, K], got {tuple(err_policy_w.shape)} and {tuple(err_policy_l.shape)}")
    return (err_policy_w - err_ref_w).unsqueeze(1) - (err_policy_l - err_ref_l)


@torch.no_grad()
def preference_metrics(err_policy_w: torch.Tensor, err_ref_w: torch.Tensor, err_policy_l: torch.Tensor,
                       err_ref_l: torch.Tensor, beta: float) -> dict[str, float]:
    """Implicit reward margin `-(beta/2) d_k` (mean), preference accuracy (fraction of d_k < 0), and the mean errors."""
    d = preference_diff(err_policy_w, err_ref_w, err_policy_l, err_ref_l).float()
    reward_w = -0.5 * beta * (err_policy_w - err_ref_w).float()
    reward_l = -0.5 * beta * (err_policy_l - err_ref_l).float()
    return {
        "reward_margin": (-0.5 * beta * d).mean().item(),
        "accuracy": (d < 0).float().mean().item(),
        "reward_w": reward_w.mean().item(),
        "reward_l": reward_l.mean().item(),
        "err_policy_w": err_policy_w.float().mean().item(),
        "err_ref_w": err_ref_w.float().mean().item(),
        "err_policy_l": err_policy_l.float().mean().item(),
        "err_ref_l": err_ref_l.float().mean().item(),
    }


def dpo_loss(err_policy_w: torch.Tensor, err_ref_w: torch.Tensor, err_policy_l: torch.Tensor,
             err_ref_l: torch.Tensor, beta: float, loss_type: str = "dpo") -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-negative Diffusion-DPO: mean over batch and k of `-log σ(-(beta/2) d_k)`.

    The official trainer sums over k instead (K times this value and gradient); the mean keeps the loss and the
    gradient's size independent of K, so a learning rate and clipping threshold carry over between K (docs/benchmarks.md).

    loss_type "ipo" uses `(-(beta/2) d_k - 1/2)^2` (a squared margin target) and "hinge" `relu(1 + (beta/2) d_k)`.
    Returns the scalar loss and float metrics (see `preference_metrics`).
    """
    d = preference_diff(err_policy_w, err_ref_w, err_policy_l, err_ref_l)
    logits = -0.5 * beta * d
    if loss_type == "dpo":
        losses = -F.logsigmoid(logits)
    elif loss_type == "ipo":
        losses = (logits - 0.5) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - logits)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(DPO_TYPES)}")
    loss = losses.mean()
    metrics = preference_metrics(err_policy_w, err_ref_w, err_policy_l, err_ref_l, beta)
    metrics["loss_dpo"] = loss.item()
    return loss, metrics


def sft_loss(err_policy_w: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning on the real clips: the mean error of the policy on the winners."""
    return err_policy_w.mean()


def split_errors(err: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split errors of the concatenation `[x_w (B), x_l (B*K, sample-major)]` into winners [B] and losers [B, K]."""
    return err[:batch_size], err[batch_size:].reshape(batch_size, -1)


def objective(kind: str, err_policy: torch.Tensor, err_ref: torch.Tensor | None, batch_size: int, *,
              beta: float, sft_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective on concatenated errors (layout of `split_errors`).

    kind: "sft" (err_policy holds winners only; err_ref may be None), "dpo", "ipo", "hinge",
    or "dpo+sft" (dpo + sft_weight * sft).
    """
    if kind == "sft":
        loss = sft_loss(err_policy[:batch_size])
        return loss, {"loss": loss.item(), "loss_sft": loss.item(), "err_policy_w": err_policy[:batch_size].mean().item()}
    if err_ref is None:
        raise ValueError(f"objective {kind!r} needs reference errors")
    pw, pl = split_errors(err_policy, batch_size)
    rw, rl = split_errors(err_ref, batch_size)
    loss_type = "dpo" if kind == "dpo+sft" else kind
    loss, metrics = dpo_loss(pw, rw, pl, rl, beta, loss_type)
    if kind == "dpo+sft":
        sft = sft_loss(pw)
        metrics["loss_sft"] = sft.item()
        loss = loss + sft_weight * sft
    elif kind not in DPO_TYPES:
        raise ValueError(f"unknown objective {kind!r}; choose one of {', '.join(OBJECTIVES)}")
    metrics["loss"] = loss.item()
    return loss, metrics
