"""Options of `realdpo train`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realbase.errors import UserError
from realbase.fields import check_fields, field
from realdpo.configs.common import ModelOptions, NegativeOptions, ShardOptions

LOSSES = ("dpo", "sft", "dpo+sft", "ipo", "hinge")
REFERENCES = ("base", "ema")
SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")
EXPERTS = ("low", "high", "both")


@dataclass
class TrainConfig(ModelOptions, NegativeOptions, ShardOptions):
    shards: list[str] = field(default_factory=list, required=True, help="Curated shards: paths or globs (repeatable; a shell-expanded list works).")
    out: Path = field(Path("runs/realdpo"), help="Run folder: lora/, checkpoints/, logs, train_config.json, plot.")
    steps: int = field(100, help="Optimizer steps.")
    batch_size: int = field(1, help="Real clips per micro-batch (each with its K negatives).")
    grad_accum: int = field(1, help="Micro-batches per optimizer step.")
    lr: float = field(1e-4, at_most=1, help="Peak learning rate.")
    lr_scheduler: str = field("constant", choices=SCHEDULERS, help=f"Learning-rate schedule after warm-up: {', '.join(SCHEDULERS)}.")
    warmup_steps: int = field(0, help="Linear warm-up steps.")
    max_grad_norm: float = field(1.0, help="Gradient clipping norm (0 disables).")
    weight_decay: float = field(1e-4, help="AdamW weight decay.")
    beta: Optional[float] = field(None, help="DPO beta; default the model's: 5000 for v-prediction (CogVideoX, the "
                                  "paper's), 500 for flow matching (Wan; flow-matching DPO work uses 100-500).")
    loss: str = field("dpo", choices=LOSSES, help=f"Objective: {', '.join(LOSSES)} (sft: plain MSE on the real clips, the paper's "
                      "baseline; ipo/hinge: DPO variants on the same margin).")
    sft_weight: float = field(1.0, help="Weight of the SFT term in --loss dpo+sft.")
    t_min: Optional[float] = field(None, help="Lowest timestep drawn, as a fraction of the schedule (sigma for flow matching); default 0.")
    t_max: Optional[float] = field(None, help="Highest timestep drawn, as a fraction of the schedule; default 0.5 for the DPO losses (the paper's less-noisy half), 1 for --loss sft (the official SFT trainer draws over the whole schedule).")
    train_experts: Optional[str] = field(None, choices=EXPERTS, help=f"Two-expert models (Wan 2.2 A14B): which expert gets a LoRA and trains, {', '.join(EXPERTS)} (low = transformer_2, the low-noise expert); default low for the DPO losses, both for --loss sft.")
    low_noise_range: list[float] = field(default_factory=list, help="Two-expert models: sigma range MIN MAX the low-noise expert trains on, within its own timesteps (default --t-min --t-max).")
    high_noise_range: list[float] = field(default_factory=list, help="Two-expert models: sigma range MIN MAX the high-noise expert trains on, within its own timesteps (default --t-min --t-max).")
    lora: bool = field(True, help="Train LoRA adapters on the transformer (--no-lora: full fine-tuning with a frozen reference copy).")
    lora_rank: int = field(16, help="LoRA rank.")
    lora_alpha: Optional[float] = field(None, help="LoRA alpha; default equals the rank.")
    ref: str = field("base", choices=REFERENCES, help=f"Reference model: {', '.join(REFERENCES)} (base = adapters disabled; ema = EMA of the policy, kept in fp32).")
    ema_rate: float = field(0.999, help="EMA rate w in ref <- w*ref + (1-w)*policy.")
    ema_every: int = field(100, help="Optimizer steps between EMA reference updates.")
    ema_rank: Optional[int] = field(None, help="Rank of the EMA reference adapter, which averages the LoRA update B@A itself (exact while the average fits this rank; beyond, a bound on the error is logged as ema_error_bound); default 2 x --lora-rank.")
    rounds: int = field(1, help="Rounds of fresh negatives; rounds after the first regenerate them with the current policy.")
    chunk_size: Optional[int] = field(None, help="Rows (winners and losers) one forward pass runs on, same gradient. "
                                      "Each chunk is backpropagated before the next runs, so activations of one chunk "
                                      "are alive at a time (one process training LoRA with chunks of 1: each loser "
                                      "row's adapter gradient is set aside until its coefficient is known; otherwise "
                                      "one extra no-grad pass over the winners); see --keep-graph. "
                                      "Default: 1 for real checkpoints (>= 100M-parameter transformers), all rows in "
                                      "one pass for tiny models.")
    keep_graph: bool = field(False, help="With --chunk-size: keep every chunk's graph until one backward (no extra "
                             "pass, but all rows' activations, or with checkpointing all rows' checkpoints, are "
                             "alive at once).")
    gradient_checkpointing: Optional[bool] = field(None, help="Recompute each transformer block's activations in the "
                                                   "backward pass, holding only block inputs. Default: on for real "
                                                   "checkpoints (>= 100M-parameter transformers), off for tiny models.")
    offload_encoders: bool = field(True, help="On an accelerator, keep the text encoder, image encoder and VAE in CPU "
                                   "memory and move each in only while it runs (caching, negatives, validation); "
                                   "training steps never hold them. No effect on a CPU.")
    fp8_base: bool = field(False, help="Store the frozen base transformer's linear weights in float8 (e4m3) and "
                           "compute in the --mixed-precision dtype (diffusers layerwise casting); LoRA only. Halves "
                           "the base's memory; base model, reference and negatives are then the fp8-rounded model.")
    optimizer: str = field("adamw", choices=OPTIMIZERS, help=f"Optimizer: {', '.join(OPTIMIZERS)} (adamw8bit: bitsandbytes' 8-bit AdamW, "
                           "2 bytes of state per trained weight instead of 8; for --no-lora).")
    num_workers: int = field(0, help="Data-loader worker processes.")
    neg_batch_size: int = field(4, help="Clips whose i-th negatives are generated together in one pipeline call.")
    checkpoint_every: int = field(50, help="Optimizer steps between checkpoints (0: only at the end).")
    keep_checkpoints: int = field(3, help="Newest checkpoints kept in OUT/checkpoints (0 keeps all).")
    validate_every: int = field(0, help="Optimizer steps between validation samples (0 disables).")
    validation_prompt: Optional[str] = field(None, help="Prompt for validation samples; default is the first clip's caption.")
    validation_steps: int = field(20, help="Sampler steps for validation samples.")
    resume: bool = field(False, help="Continue from the latest checkpoint in --out.")
    val_pairs: int = field(0, help="Clips kept out of training (the same ones every round, chosen by --seed) whose "
                           "preference accuracy, margin and both policy-minus-reference error terms are reported every "
                           "--val-every steps as val_* in metrics.jsonl, at fixed timesteps and noise: a gap to the "
                           "training pairs' figures shows overfitting. 0 disables.")
    val_every: int = field(50, help="Optimizer steps between held-out pair checks (--val-pairs); the last step is "
                           "always checked.")

    def validate(self) -> None:
        check_fields(self)
        self.validate_model_options()
        self.validate_negative_options()
        if not self.shards:
            raise UserError("--shards is required: one or more curated .tar shards or globs")
        for name in ("steps", "batch_size", "grad_accum", "lora_rank", "ema_every", "rounds", "neg_batch_size",
                     "validation_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.fp8_base and not self.lora:
            raise UserError("--fp8-base stores the frozen base in fp8; full fine-tuning (--no-lora) trains those weights")
        if self.ema_rank is not None and self.ema_rank < 1:
            raise UserError("--ema-rank must be at least 1")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise UserError("--chunk-size must be at least 1")
        if self.lr <= 0 or (self.beta is not None and self.beta <= 0):
            raise UserError("--lr and --beta must be positive")
        if self.t_min is None:
            self.t_min = 0.0
        if self.t_max is None:
            self.t_max = 1.0 if self.loss == "sft" else 0.5
        if not 0 <= self.t_min < self.t_max <= 1:
            raise UserError("--t-min and --t-max must satisfy 0 <= t-min < t-max <= 1")
        for name in ("low_noise_range", "high_noise_range"):
            r = getattr(self, name)
            if r and (len(r) != 2 or not 0 <= r[0] < r[1] <= 1):
                raise UserError(f"--{name.replace('_', '-')} takes two values MIN MAX with 0 <= MIN < MAX <= 1")
        if not 0 < self.ema_rate < 1:
            raise UserError("--ema-rate must be between 0 and 1")
        if min(self.warmup_steps, self.checkpoint_every, self.validate_every, self.num_workers, self.keep_checkpoints,
               self.max_grad_norm, self.weight_decay, self.sft_weight) < 0:
            raise UserError("--warmup-steps, --checkpoint-every, --validate-every, --num-workers, --keep-checkpoints, "
                            "--max-grad-norm, --weight-decay and --sft-weight must not be negative")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise UserError("--lora-alpha must be positive")
        if self.val_pairs < 0 or self.val_every < 1:
            raise UserError("--val-pairs must not be negative and --val-every must be at least 1")
        if self.val_pairs and self.loss == "sft":
            raise UserError("--val-pairs checks preference pairs; --loss sft trains without losers")
        if self.rounds > self.steps:
            raise UserError("--rounds cannot exceed --steps (each round trains at least one step)")

    def expert_ranges(self) -> dict[str, tuple[float, float]]:
        """The per-expert sigma ranges given (two-expert models)."""
        return {name: (r[0], r[1]) for name, r in (("low", self.low_noise_range), ("high", self.high_noise_range)) if r}
