"""`lipbench speed` and `lipbench check`: layer speed relative to a plain conv, and CI regression checks."""
from __future__ import annotations

import fnmatch
import json
from statistics import median
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from lipbench import speed
from lipbench.cli import app, console
from lipbench.errors import UserError
from lipbench.registry import get_method, load_plugin, resolve_layers

METHOD = (
    "What is timed, per layer and for one shape: a [bold]train[/] step (forward, backward to the input and the "
    "parameters, SGD step) and an [bold]eval[/] step (forward in eval mode under no_grad, caches warm), each "
    "against the same step of a plain nn.Conv2d of the same shape (nn.Linear for --kind linear) in the same "
    "process. After a warm-up, blocks of layer steps and reference steps alternate (ABAB...), each block about "
    "--block-ms long; every neighbouring pair gives a ratio of per-step times, and a process reports the median "
    "of its pairs. --processes fresh processes run one after another: the ratio is the median of their medians.\n\n"
    "On CPU the clock is the process's CPU time with one thread (--clock cpu --threads 1): a busy shared runner "
    "then delays a step without changing its measured cost. On CUDA it is wall time, the GPU synchronized at "
    "both ends of a block."
)
EXIT_CODES = "Exit codes: 0 ok; 1 a layer regressed (named); 2 not comparable (other device class, a layer " \
             "that is not registered or fails to run) or a usage error."

LayersOption = Annotated[Optional[str], typer.Option(
    "--layers", "-l", help="Layer names or wildcards, comma-separated, e.g. 'aol,s*'.")]
KindOption = Annotated[str, typer.Option(help="conv, or linear (reference nn.Linear, input batch x channels).")]
BatchOption = Annotated[Optional[int], typer.Option(min=1, help="Batch size (default: 64 on CPU, 256 on CUDA).")]
ChannelsOption = Annotated[Optional[int], typer.Option(
    min=1, help="Input = output channels (features for linear) (default: 64 on CPU, 128 on CUDA).")]
SizeOption = Annotated[Optional[int], typer.Option(min=1, help="Image height = width (default: 16 on CPU, 32 on CUDA).")]
KernelOption = Annotated[Optional[int], typer.Option(min=1, help="Kernel size (default: 3).")]
DtypeOption = Annotated[str, typer.Option(help="torch dtype: float32, float64, bfloat16, float16.")]
ProcessesOption = Annotated[int, typer.Option(min=1, help="Fresh processes, one after another.")]
PairsOption = Annotated[int, typer.Option(min=1, help="Alternating layer/reference block pairs per step, per process.")]
BlockOption = Annotated[float, typer.Option("--block-ms", min=0.1, help="Target length of one block of repeated steps.")]
WarmupOption = Annotated[float, typer.Option("--warmup-ms", min=0, help="Warm-up time per step kind, layer and reference together.")]
ThreadsOption = Annotated[int, typer.Option(min=1, help="torch.set_num_threads in the measuring processes.")]
ClockOption = Annotated[Optional[str], typer.Option(help="cpu (process CPU time) or wall (default: cpu on CPU, wall on CUDA).")]
PluginOption = Annotated[Optional[list[str]], typer.Option(
    help="Import a module (dotted path or .py file) that registers layers; repeatable. The measuring processes load it too.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def load_plugins(plugins: Optional[list[str]]) -> list[str]:
    """Load plugins here; return them as the measuring processes must name them (files by absolute path)."""
    resolved = [str(Path(plugin).resolve()) if plugin.endswith(".py") else plugin for plugin in plugins or []]
    for plugin in resolved:
        load_plugin(plugin)
    return resolved


def report_progress(message: str) -> None:
    console.print(f"[dim]  {message}[/]", highlight=False)


def layers_of_kind(names: list[str], kind: str) -> list[str]:
    """The names that offer ``kind``; the others are skipped with a note."""
    kept = [name for name in names if kind in get_method(name).kinds]
    for name in sorted(set(names) - set(kept)):
        console.print(f"[yellow]skipped {name}: it has no {kind} variant[/]")
    if not kept:
        raise UserError(f"none of the layers {', '.join(names)} has a {kind} variant")
    return kept


def describe(config: speed.Config, processes: int) -> str:
    timing = config.timing
    return (f"{config.shape.describe()}, {config.dtype}, {config.device}; {processes} processes x {timing.pairs} "
            f"pairs, {timing.clock} clock, {timing.threads} thread{'s' if timing.threads > 1 else ''}")


@app.command("speed", help=f"Time layers relative to a plain convolution; save a baseline for `lipbench check`.\n\n"
                           f"{METHOD}\n\n--save FILE writes the ratios, their per-process values, the shape, dtype, "
                           f"device class and an environment fingerprint as JSON (YAML for .yaml/.yml), editable "
                           f"by hand; --json prints the same document.")
def speed_command(
    layers: LayersOption = "*",
    kind: KindOption = "conv",
    batch: BatchOption = None,
    channels: ChannelsOption = None,
    size: SizeOption = None,
    kernel: KernelOption = None,
    dtype: DtypeOption = "float32",
    device: Annotated[str, typer.Option(help="auto (cuda when available), cpu or cuda.")] = "auto",
    processes: ProcessesOption = 3,
    pairs: PairsOption = speed.Timing.pairs,
    block_ms: BlockOption = speed.Timing.block_ms,
    warmup_ms: WarmupOption = speed.Timing.warmup_ms,
    threads: ThreadsOption = speed.Timing.threads,
    clock: ClockOption = None,
    plugin: PluginOption = None,
    json_output: JsonOption = False,
    save: Annotated[Optional[Path], typer.Option(help="Write a baseline file (JSON, or YAML by extension).")] = None,
) -> None:
    plugins = load_plugins(plugin)
    config = speed.timing_config(speed.device_class(device), dtype, kind, batch, channels, size, kernel, clock,
                               pairs=pairs, block_ms=block_ms, warmup_ms=warmup_ms, threads=threads)
    names = layers_of_kind(resolve_layers(layers or "*"), kind)
    console.print(f"measuring {', '.join(names)}: {describe(config, processes)}", highlight=False)
    speeds = speed.measure(names, config, plugins, processes, progress=report_progress)[0]
    document = speed.to_document(speeds, config)
    if save:
        speed.save_document(document, save)
        console.print(f"saved baseline {save}", highlight=False)
    if json_output:
        print(json.dumps(document, indent=2))
    else:
        print_speeds(speeds, config, processes)
    for name, reason in speeds.skipped.items():
        console.print(f"[yellow]skipped {name}:[/] {reason}", highlight=False)
    for name, error in speeds.errors.items():
        console.print(f"[bold red]{name} failed:[/] {error}", highlight=False)
    if speeds.errors:
        raise typer.Exit(2)


def print_speeds(speeds: speed.Speeds, config: speed.Config, processes: int) -> None:
    reference = "nn.Linear" if config.shape.kind == "linear" else "nn.Conv2d"
    table = Table(title=f"Step time / {reference} step time ({describe(config, processes)})")
    table.add_column("layer")
    for step in speed.STEPS:
        table.add_column(step, justify="right")
        table.add_column("range", justify="right", style="dim")
    for step in speed.STEPS:
        table.add_column(f"{step} ms", justify="right", style="dim")
    for name, steps in speeds.samples.items():
        ratios = [(f"{steps[step].ratio:.3f}", f"{min(steps[step].per_process):.2f}-{max(steps[step].per_process):.2f}")
                  for step in speed.STEPS]
        times = [f"{median(steps[step].layer_ms):.3g}/{median(steps[step].reference_ms):.3g}" for step in speed.STEPS]
        table.add_row(name, *(cell for pair in ratios for cell in pair), *times)
    Console().print(table)
    console.print(f"ratio: median over processes; range: the per-process medians; ms: layer/{reference} "
                  f"per step ({config.timing.clock} clock)", highlight=False, style="dim")


@app.command("check", help=f"Fail when a layer got slower than its baseline: a CI regression check.\n\n"
                           f"Re-measures every layer of --baseline FILE (made by `lipbench speed --save`) with its "
                           f"shape, dtype and timing, or measures this code and --against GIT_REF side by side "
                           f"(processes of both revisions interleaved). A layer regresses when its ratio "
                           f"(after/before) grew past --factor AND a one-sided Mann-Whitney U test on the "
                           f"per-process ratios says after > before at --alpha; a suspect is measured once more, "
                           f"its processes pooled in, before it fails. Marks: ok; ~ over the factor but not "
                           f"significant; regressed. The shape and timing options apply to --against; a baseline brings its own.\n\n"
                           f"{METHOD}\n\n{EXIT_CODES}")
def check_command(
    baseline: Annotated[Optional[Path], typer.Option(help="Baseline file from `lipbench speed --save`.")] = None,
    against: Annotated[Optional[str], typer.Option(
        "--against", metavar="GIT_REF", help="Compare with this git revision of lipbench, measured in the same job.")] = None,
    layers: LayersOption = None,
    factor: Annotated[Optional[float], typer.Option(
        min=1.0, help="Growth of the ratio that counts as a regression (default: 1.5 on CPU, 1.1 on CUDA).")] = None,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Significance level of the rank test.")] = speed.DEFAULT_ALPHA,
    processes: ProcessesOption = 3,
    device: Annotated[Optional[str], typer.Option(
        help="cpu or cuda (default: the baseline's device class; auto with --against).")] = None,
    plugin: PluginOption = None,
    json_output: JsonOption = False,
    kind: KindOption = "conv",
    batch: BatchOption = None,
    channels: ChannelsOption = None,
    size: SizeOption = None,
    kernel: KernelOption = None,
    dtype: DtypeOption = "float32",
    pairs: PairsOption = speed.Timing.pairs,
    block_ms: BlockOption = speed.Timing.block_ms,
    warmup_ms: WarmupOption = speed.Timing.warmup_ms,
    threads: ThreadsOption = speed.Timing.threads,
    clock: ClockOption = None,
) -> None:
    if (baseline is None) == (against is None):
        raise UserError("give exactly one of --baseline FILE and --against GIT_REF")
    plugins = load_plugins(plugin)
    if baseline is not None:
        config, before, after = measure_against_baseline(baseline, layers, device, plugins, processes, alpha)
    else:
        config = speed.timing_config(speed.device_class(device or "auto"), dtype, kind, batch, channels, size,
                                   kernel, clock, pairs=pairs, block_ms=block_ms, warmup_ms=warmup_ms, threads=threads)
        before, after = measure_against_revision(against, config, layers, plugins, processes, alpha)
    factor = factor or speed.DEFAULT_FACTOR[config.device]
    verdicts = speed.confirmed_verdicts(
        before, after, lambda suspects: announce_and_measure(suspects, config, plugins, processes), factor, alpha)
    if json_output:
        print(json.dumps({"factor": factor, "alpha": alpha, "verdicts": [vars(verdict) for verdict in verdicts]},
                         indent=2))
    else:
        print_verdicts(verdicts, factor, alpha)
    regressed = sorted({verdict.layer for verdict in verdicts if verdict.mark == "regressed"})
    if regressed:
        compared_with = baseline or f"revision {against}"
        console.print(f"[bold red]regression:[/] {', '.join(regressed)} slower than {compared_with} by more than "
                      f"x{factor:g} (significant at p <= {alpha:g}, confirmed by a second measurement)",
                      highlight=False)
        raise typer.Exit(1)


def measure_against_baseline(baseline: Path, layers: Optional[str], device: Optional[str], plugins: list[str],
                             processes: int, alpha: float) -> tuple[speed.Config, speed.Speeds, speed.Speeds]:
    """The baseline's config and speeds, and this code's speeds measured the same way."""
    config, before = speed.from_document(speed.load_document(baseline), str(baseline))
    wanted = speed.device_class(device) if device else config.device
    if wanted != config.device:
        raise UserError(f"not comparable: {baseline} was measured on {config.device}, this check runs on {wanted}")
    speed.device_class(config.device)  # a cuda baseline on a machine without a GPU is not comparable either
    names = [name for name in before.samples
             if not layers or any(fnmatch.fnmatchcase(name, pattern.strip()) for pattern in layers.split(","))]
    if not names:
        raise UserError(f"no layer of {baseline} matches --layers {layers!r}")
    for name in names:
        get_method(name)  # a layer that is no longer registered makes the baseline not comparable
    warn_about_environment(before.environment, config)
    require_power(min(len(sample.per_process) for name in names for sample in before.samples[name].values()),
                  processes, alpha)
    console.print(f"checking {', '.join(names)} against {baseline}: {describe(config, processes)}", highlight=False)
    return config, before, measured(names, config, plugins, processes)


def measure_against_revision(against: str, config: speed.Config, layers: Optional[str], plugins: list[str],
                             processes: int, alpha: float) -> tuple[speed.Speeds, speed.Speeds]:
    """The speeds of revision ``against`` and of this code, their processes interleaved."""
    if not layers:
        raise UserError("--against needs --layers, e.g. --layers aol,standard")
    names = layers_of_kind(resolve_layers(layers), config.shape.kind)
    require_power(processes, processes, alpha)
    console.print(f"checking {', '.join(names)} against {against}: {describe(config, processes)}", highlight=False)
    with speed.revision_tree(against) as tree:
        after, before = speed.measure(names, config, plugins, processes, trees=(None, tree), progress=report_progress)
    fail_on_errors(after, "this tree")
    fail_on_errors(before, f"revision {against}")
    return before, after


def measured(names: list[str], config: speed.Config, plugins: list[str], processes: int) -> speed.Speeds:
    speeds = speed.measure(names, config, plugins, processes, progress=report_progress)[0]
    fail_on_errors(speeds, "this tree")
    return speeds


def announce_and_measure(suspects: list[str], config: speed.Config, plugins: list[str], processes: int) -> speed.Speeds:
    console.print(f"over the factor: {', '.join(suspects)}; measuring once more to confirm", highlight=False)
    return measured(suspects, config, plugins, processes)


def fail_on_errors(speeds: speed.Speeds, where: str) -> None:
    failures = {**speeds.skipped, **speeds.errors}
    if failures:
        listed = "; ".join(f"{name}: {error}" for name, error in failures.items())
        raise UserError(f"not comparable: layers failed to run in {where} ({listed})")


def require_power(before_count: int, processes: int, alpha: float) -> None:
    """Refuse a check whose rank test could never reach ``alpha``, even with the confirming processes."""
    if speed.smallest_p(2 * processes, before_count) > alpha:
        raise UserError(f"{before_count} baseline values against {processes} processes (+{processes} to confirm) "
                        f"can never be significant at p <= {alpha:g}; use --processes 3 or more for both "
                        f"the baseline and the check")


def warn_about_environment(recorded: dict, config: speed.Config) -> None:
    """Note what differs from the machine the baseline was measured on (ratios stay comparable)."""
    current = speed.baseline_environment(config.device)
    for key in ("device", "cpu_count", "torch", "lipbench"):
        if key in recorded and recorded[key] != current[key]:
            console.print(f"[yellow]note:[/] baseline {key} {recorded[key]!r}, here {current[key]!r}", highlight=False)


def print_verdicts(verdicts: list[speed.Verdict], factor: float, alpha: float) -> None:
    table = Table(title=f"Ratio to the reference, before and after (regressed: after/before > {factor:g} "
                        f"and p <= {alpha:g})")
    for column in ("layer", "step", "before", "after", "after/before", "p", "mark"):
        table.add_column(column, justify="left" if column in ("layer", "step", "mark") else "right")
    styles = {"ok": "green", "~": "yellow", "regressed": "bold red"}
    for verdict in verdicts:
        table.add_row(verdict.layer, verdict.step, f"{verdict.before:.3f}", f"{verdict.after:.3f}",
                      f"{verdict.change:.2f}", f"{verdict.p_value:.3f}",
                      f"[{styles[verdict.mark]}]{verdict.mark}[/]")
    Console().print(table)
