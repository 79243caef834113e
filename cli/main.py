"""The `realdpo` command: one thin function per command, built from its config class."""

from __future__ import annotations

import sys
import unicodedata

import typer

from cli.guard import outputs_line
from cli.options import CommandGroup, add_command
from realaction.config import CurateConfig
from realbase.errors import UserError
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
            "Curate raw videos into RealAction WebDataset shards (scene cuts, clips, filters, captions).",
            out_folder=lambda cfg: cfg.out, outputs=lambda cfg: outputs_line(cfg.out, [
                ("shards/", "the clips, for train --shards"), ("manifest.jsonl", "every clip: kept or why not"),
                ("DATA_CARD.md", ""), ("summary.json", "")]))
add_command(app, "train", TrainConfig, "realdpo.training.trainer:train",
            "Post-train a video diffusion transformer with RealDPO on curated shards.",
            out_folder=lambda cfg: cfg.out, outputs=lambda cfg: outputs_line(cfg.out, [
                ("lora/", "for sample --lora"), ("transformer/", "the fine-tuned transformer"),
                ("metrics.jsonl", ""), ("training.png", ""), ("checkpoints/", "for --resume"),
                ("logs/", "tensorboard")]))
add_command(app, "negatives", NegativesConfig, "realdpo.generation.negatives:precompute",
            "Precompute the generated 'lose' videos (as latents) for curated shards.")
add_command(app, "sample", SampleConfig, "realdpo.generation.sampling:sample",
            "Generate a video from a prompt (and a first frame), optionally with a trained LoRA.",
            out_folder=lambda cfg: cfg.out if cfg.prompts is not None else None)


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


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"realdpo {version('realdpo')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("realdpo (not installed; version unknown)")
        raise typer.Exit()


@app.callback()
def _root(show_version: bool = typer.Option(False, "--version", help="Show the version and exit.", is_eager=True,
                                            callback=_show_version)) -> None:
    pass


def terminal_safe(text: str) -> str:
    """`text` as one line with nothing the terminal would act on: whitespace runs become one space, control and
    format characters (escape sequences, bidi overrides) are shown as \\x.. / \\u.... escapes."""
    text = " ".join(text.split())
    return "".join(c if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn") else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


INTERRUPTED = 130  # the shell's code for a command ended by SIGINT


def _interrupted() -> int:
    print("Interrupted (Ctrl-C): stopped before finishing. What was written is kept; run the command again to go on "
          "(train: add --resume).", file=sys.stderr)
    return INTERRUPTED


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (expected mistakes print one line and return 2; Ctrl-C returns 130)."""
    try:
        # Commands return None, so a number here is typer's own exit code: 130 when it caught KeyboardInterrupt.
        code = app(args=argv, prog_name="realdpo", standalone_mode=False)
    except KeyboardInterrupt:
        return _interrupted()
    except UserError as e:
        print(f"Error: {terminal_safe(str(e))}", file=sys.stderr)
        return 2
    except SystemExit as e:
        return int(e.code or 0)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return _interrupted()
    except typer.TyperException as e:  # click's usage errors, as typer vendors click
        e.show()
        return getattr(e, "exit_code", 2)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        return _interrupted() if code == INTERRUPTED else code
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
