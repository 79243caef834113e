"""`realdpo demo`: curate the built-in footage, train the built-in model with RealDPO, sample. Offline, on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from realaction.config import CurateConfig
from realaction.errors import UserError
from realaction.shards import read_jsonl
from realdpo.configs.demo import DemoConfig
from realdpo.configs.sample import SampleConfig
from realdpo.configs.train import TrainConfig

console = Console()


def demo(cfg: DemoConfig) -> None:
    from realaction.footage import make_demo_footage
    from realaction.pipeline import curate
    from realdpo.generation.sampling import sample
    from realdpo.training.trainer import train

    started = time.perf_counter()
    out = Path(cfg.out)
    console.rule("[bold]1/3 curate[/] the built-in footage")
    footage = make_demo_footage(out / "footage")
    curated = out / "curated"
    curate(CurateConfig(src=footage, out=curated, max_side=256, workers=2))
    shards = sorted(str(p) for p in (curated / "shards").glob("*.tar"))
    if not shards:
        raise UserError(f"the demo kept no clips; see {curated / 'manifest.jsonl'}")

    console.rule("[bold]2/3 train[/] the built-in model with RealDPO")
    run_dir = out / "run"
    train_cfg = TrainConfig(shards=shards, out=run_dir, steps=cfg.steps, seed=cfg.seed, lr=2e-3,
                            neg_steps=8, checkpoint_every=0, resume=(run_dir / "checkpoints").is_dir())
    train_cfg.validate()
    train(train_cfg)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    table = Table(title="RealDPO on the built-in model")
    for col in ("", "step", "loss", "reward margin", "preference accuracy"):
        table.add_column(col, justify="right")
    for label, row in (("start", rows[0]), ("end", rows[-1])):
        table.add_row(label, str(row["step"]), f"{row['loss']:.4f}", f"{row['reward_margin']:+.4f}", f"{row['accuracy']:.2f}")
    console.print(table)

    console.rule("[bold]3/3 sample[/] with the trained LoRA")
    prompt = next(r["caption"] for r in read_jsonl(curated / "manifest.jsonl") if r.get("kept"))
    video = out / "sample.mp4"
    sample_cfg = SampleConfig(prompt=prompt, lora=run_dir / "lora", out=video, steps=10, seed=cfg.seed)
    sample_cfg.validate()
    sample(sample_cfg)
    console.print(f"[green]done[/] in {time.perf_counter() - started:.0f} s: shards in {curated / 'shards'}, "
                  f"LoRA in {run_dir / 'lora'}, training plot {run_dir / 'training.png'}, sample {video}")
