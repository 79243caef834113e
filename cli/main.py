"""The `realdpo` command: one thin function per command, built from its config class."""

from __future__ import annotations

import sys

import typer

from cli.options import CommandGroup, add_command
from realaction.config import CurateConfig
from realaction.errors import UserError
from realdpo.configs.demo import DemoConfig
from realdpo.configs.eval import EvalConfig
from realdpo.configs.lab import LabBuildConfig, LabCheckConfig, LabRenderConfig
from realdpo.configs.negatives import NegativesConfig
from realdpo.configs.sample import SampleConfig
from realdpo.configs.train import TrainConfig

app = typer.Typer(
    name="realdpo",
    cls=CommandGroup,
    help="Curate real human-action clips and post-train video diffusion models with RealDPO.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

add_command(app, "curate", CurateConfig, "realaction.pipeline:curate",
            "Curate raw videos into RealAction WebDataset shards (scene cuts, clips, filters, captions).")
add_command(app, "train", TrainConfig, "realdpo.training.trainer:train",
            "Post-train a video diffusion transformer with RealDPO on curated shards.")
add_command(app, "negatives", NegativesConfig, "realdpo.generation.negatives:precompute",
            "Precompute the generated 'lose' videos (as latents) for curated shards.")
add_command(app, "sample", SampleConfig, "realdpo.generation.sampling:sample",
            "Generate a video from a prompt (and a first frame), optionally with a trained LoRA.")
def _eval(cfg: EvalConfig) -> dict:
    """`realdpo eval`: the library's evaluation, with the motion lab's tracker plugged in for --lab (the lab is a
    consumer of the library; only this layer puts the two together)."""
    from realdpo.evaluation.report import evaluate

    if not cfg.lab:
        return evaluate(cfg)
    from realdpo.lab.tracker import LAB_SCORER

    return evaluate(cfg, lab_scorer=LAB_SCORER)


add_command(app, "eval", EvalConfig, _eval,
            "Score folders of generated videos side by side: motion, smoothness, flicker, CLIP, FVD.")
add_command(app, "demo", DemoConfig, "realdpo.demo:demo",
            "Curate the built-in footage, then RealDPO on the motion lab (its model, curated lab clips, physical rate "
            "before and after): all offline, on a CPU.")

lab_app = typer.Typer(name="lab", help="The motion lab: a physics world, its built-in CogVideoX image-to-video model "
                      "and its physical-motion metric.", no_args_is_help=True, cls=CommandGroup)
add_command(lab_app, "render", LabRenderConfig, "realdpo.lab.sets:render",
            "Write lab clips (web mix, real set or held-out prompts) as mp4 files with caption sidecars.")
add_command(lab_app, "build", LabBuildConfig, "realdpo.lab.build:build",
            "Retrain the built-in lab model from a seed: the VAE, then the transformer and text encoder.")
add_command(lab_app, "check", LabCheckConfig, "realdpo.lab.evaluate:check",
            "Sample the lab model on held-out prompts and print its render pass and physical rate (builds nothing).")
app.add_typer(lab_app, name="lab")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (expected mistakes print one line and return 2)."""
    try:
        app(args=argv, prog_name="realdpo", standalone_mode=False)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        return int(e.code or 0)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        return 130
    except typer.TyperException as e:  # click's usage errors, as typer vendors click
        e.show()
        return getattr(e, "exit_code", 2)
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
