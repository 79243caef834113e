"""RealDPO objectives as plain functions of per-sample errors (docs/method.md).

Every function takes the weighted squared errors `E` that `ModelSpec.per_sample_error` returns, so it is the same
for v-prediction and flow matching. Shapes: winners `[B]`, losers `[B, K]`. Lower error means higher implicit
reward: the reward of a sample under the policy is `-(beta/2) * (E_policy - E_ref)`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from realbase.fields import one_of

DPO_TYPES = ("dpo", "ipo", "hinge")
OBJECTIVES = ("dpo", "sft", "dpo+sft", "ipo", "hinge")


def preference_diff(err_policy_w: torch.Tensor, err_ref_w: torch.Tensor, err_policy_l: torch.Tensor,
                    err_ref_l: torch.Tensor) -> torch.Tensor:
    """d_k = [E_θ(x_w) - E_ref(x_w)] - [E_θ(x_l^k) - E_ref(x_l^k)], shape [B, K]; d_k < 0 means the policy prefers the winner."""
    if err_policy_l.dim() != 2 or err_policy_w.shape != err_policy_l.shape[:1]:
        raise ValueError(f"expected winners [B] and losers [B, K], got {tuple(err_policy_w.shape)} and {tuple(err_policy_l.shape)}")
    return (err_policy_w - err_ref_w).unsqueeze(1) - (err_policy_l - err_ref_l)


SATURATED_GRAD = 0.01  # a pair whose loss gradient w.r.t. its logit is below this no longer teaches: saturated


def pair_losses(logits: torch.Tensor, loss_type: str = "dpo") -> torch.Tensor:
    """Per-pair loss of the logits `-(beta/2) d_k` [B, K]: dpo `-log σ(x)`, ipo `(x - 1/2)^2`, hinge `relu(1 - x)`."""
    one_of(loss_type, DPO_TYPES, "loss_type", ValueError)
    if loss_type == "dpo":
        return -F.logsigmoid(logits)
    if loss_type == "ipo":
        return (logits - 0.5) ** 2
    return torch.relu(1.0 - logits)  # hinge


def saturated_pairs(logits: torch.Tensor, loss_type: str = "dpo") -> torch.Tensor:
    """Bool [B, K]: the pair's loss gradient |dℓ/dx| is below SATURATED_GRAD (dpo: σ(x) > 0.99; hinge: x ≥ 1; ipo:
    within 0.005 of its target 1/2)."""
    if loss_type == "dpo":
        return torch.sigmoid(-logits) < SATURATED_GRAD
    if loss_type == "hinge":
        return logits >= 1.0
    return (2 * (logits - 0.5)).abs() < SATURATED_GRAD


@torch.no_grad()
def preference_metrics(err_policy_w: torch.Tensor, err_ref_w: torch.Tensor, err_policy_l: torch.Tensor,
                       err_ref_l: torch.Tensor, beta: float) -> dict[str, float]:
    """Implicit reward margin `-(beta/2) d_k` (mean), preference accuracy (fraction of d_k < 0, a tie counting one
    half), and the mean errors (see `pair_stats` for every metric; this one syncs the host once)."""
    stats = pair_stats(err_policy_w, err_ref_w, err_policy_l, err_ref_l, beta)
    keep = ("reward_margin", "accuracy", "reward_w", "reward_l", "err_policy_w", "err_ref_w", "err_policy_l",
            "err_ref_l")
    return stats_means({k: stats[k] for k in keep})


def pair_stats(err_policy_w: torch.Tensor, err_ref_w: torch.Tensor, err_policy_l: torch.Tensor,
               err_ref_l: torch.Tensor, beta: float, loss_type: str = "dpo",
               groups: dict[str, torch.Tensor] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The health of a batch of pairs, as (sum, count) per metric, 0-dim tensors on the errors' device (no host
    sync): summed over micro-batches and processes and then divided, they give the step's means.

    accuracy: d_k < 0, a tie (d_k == 0: the policy cannot tell the pair apart) counting one half; reward_margin:
    `-(beta/2) d_k`; err_diff_w / err_diff_l: policy-minus-reference error of winners [B] and losers [B, K] (a
    positive err_diff_w is likelihood displacement: the real clip got less likely); saturated: `saturated_pairs`;
    ties: d_k == 0 exactly. groups: name -> bool [B] clips of a group (a timestep bucket, an expert), each giving
    accuracy_<name> and reward_margin_<name> over its pairs.
    """
    with torch.no_grad():
        dw = (err_policy_w - err_ref_w).float()
        dl = (err_policy_l - err_ref_l).float()
        d = dw.unsqueeze(1) - dl
        logits = -0.5 * beta * d
        correct = (d < 0).float() + 0.5 * (d == 0).float()
        n_pairs = d.new_tensor(float(d.numel()))
        n_clips = d.new_tensor(float(dw.numel()))
        out = {
            "accuracy": (correct.sum(), n_pairs),
            "reward_margin": (logits.sum(), n_pairs),
            "reward_w": ((-0.5 * beta * dw).sum(), n_clips),
            "reward_l": ((-0.5 * beta * dl).sum(), n_pairs),
            "err_policy_w": (err_policy_w.float().sum(), n_clips),
            "err_ref_w": (err_ref_w.float().sum(), n_clips),
            "err_policy_l": (err_policy_l.float().sum(), n_pairs),
            "err_ref_l": (err_ref_l.float().sum(), n_pairs),
            "err_diff_w": (dw.sum(), n_clips),
            "err_diff_l": (dl.sum(), n_pairs),
            "saturated": (saturated_pairs(logits, loss_type).float().sum(), n_pairs),
            "ties": ((d == 0).float().sum(), n_pairs),
        }
        for name, clips in (groups or {}).items():
            mask = clips.to(d.device).float().unsqueeze(1).expand_as(d)
            out[f"accuracy_{name}"] = ((correct * mask).sum(), mask.sum())
            out[f"reward_margin_{name}"] = ((logits * mask).sum(), mask.sum())
    return out


def stats_means(stats: dict[str, tuple[torch.Tensor, torch.Tensor]],
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """sum / count of each metric of `pair_stats` in one host sync; a metric with no count (an empty group) is left
    out. `reduce` sums the packed [metrics, 2] (sum, count) tensor over processes before it is read."""
    names = list(stats)
    sums = [torch.as_tensor(s).float() for s, _ in stats.values()]
    packed = torch.stack([torch.stack([s, torch.as_tensor(c, device=s.device).float()])
                          for s, (_, c) in zip(sums, stats.values())])
    values = (reduce(packed) if reduce is not None else packed).cpu().tolist()
    return {n: s / c for n, (s, c) in zip(names, values) if c > 0}


def dpo_loss(err_policy_w: torch.Tensor, err_ref_w: torch.Tensor, err_policy_l: torch.Tensor,
             err_ref_l: torch.Tensor, beta: float, loss_type: str = "dpo") -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-negative Diffusion-DPO: mean over batch and k of `-log σ(-(beta/2) d_k)`.

    The official trainer sums over k instead (K times this value and gradient); the mean keeps the loss and the
    gradient's size independent of K, so a learning rate and clipping threshold carry over between K (docs/benchmarks.md).

    loss_type "ipo" uses `(-(beta/2) d_k - 1/2)^2` (a squared margin target) and "hinge" `relu(1 + (beta/2) d_k)`.
    Returns the scalar loss and float metrics (see `preference_metrics`).
    """
    loss = pair_losses(-0.5 * beta * preference_diff(err_policy_w, err_ref_w, err_policy_l, err_ref_l), loss_type).mean()
    metrics = preference_metrics(err_policy_w, err_ref_w, err_policy_l, err_ref_l, beta)
    metrics["loss_dpo"] = loss.item()
    return loss, metrics


def sft_loss(err_policy_w: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning on the real clips: the mean error of the policy on the winners."""
    return err_policy_w.mean()


def split_errors(err: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split errors of the concatenation `[x_w (B), x_l (B*K, sample-major)]` into winners [B] and losers [B, K]."""
    return err[:batch_size], err[batch_size:].reshape(batch_size, -1)


def _check_kind(kind: str) -> None:
    one_of(kind, OBJECTIVES, "objective", ValueError)


def objective_terms(kind: str, err_policy: torch.Tensor, err_ref: torch.Tensor | None, batch_size: int, *,
                    beta: float, sft_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The training objective's scalar terms on concatenated errors (layout of `split_errors`), no host sync:
    "loss", and "loss_dpo" / "loss_sft" where the objective has them.

    kind: "sft" (err_policy holds winners only; err_ref may be None), "dpo", "ipo", "hinge",
    or "dpo+sft" (dpo + sft_weight * sft).
    """
    _check_kind(kind)
    if kind == "sft":
        sft = sft_loss(err_policy[:batch_size])
        return {"loss": sft, "loss_sft": sft}
    if err_ref is None:
        raise ValueError(f"objective {kind!r} needs reference errors")
    pw, pl = split_errors(err_policy, batch_size)
    rw, rl = split_errors(err_ref, batch_size)
    loss_type = "dpo" if kind == "dpo+sft" else kind
    dpo = pair_losses(-0.5 * beta * preference_diff(pw, rw, pl, rl), loss_type).mean()
    if kind != "dpo+sft":
        return {"loss": dpo, "loss_dpo": dpo}
    sft = sft_loss(pw)
    return {"loss": dpo + sft_weight * sft, "loss_dpo": dpo, "loss_sft": sft}


def step_stats(kind: str, err_policy: torch.Tensor, err_ref: torch.Tensor | None, batch_size: int, *, beta: float,
               sft_weight: float = 1.0, groups: dict[str, torch.Tensor] | None = None
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A micro-batch's metrics as (sum, count) pairs (`pair_stats`, plus the loss terms, each counted once per
    micro-batch), without a host sync."""
    with torch.no_grad():
        terms = objective_terms(kind, err_policy.detach(), None if err_ref is None else err_ref.detach(), batch_size,
                                beta=beta, sft_weight=sft_weight)
        one = err_policy.new_tensor(1.0, dtype=torch.float32)
        out = {k: (v.float(), one) for k, v in terms.items()}
        if kind == "sft":
            out["err_policy_w"] = (err_policy[:batch_size].detach().float().sum(), one * batch_size)
            return out
        pw, pl = split_errors(err_policy.detach(), batch_size)
        rw, rl = split_errors(err_ref.detach(), batch_size)
        out.update(pair_stats(pw, rw, pl, rl, beta, "dpo" if kind == "dpo+sft" else kind, groups))
    return out


def objective(kind: str, err_policy: torch.Tensor, err_ref: torch.Tensor | None, batch_size: int, *,
              beta: float, sft_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective on concatenated errors and its metrics as floats (one host sync; the training step
    uses `objective_terms` and `step_stats` and syncs once per optimizer step)."""
    terms = objective_terms(kind, err_policy, err_ref, batch_size, beta=beta, sft_weight=sft_weight)
    return terms["loss"], stats_means(step_stats(kind, err_policy, err_ref, batch_size, beta=beta,
                                                 sft_weight=sft_weight))
