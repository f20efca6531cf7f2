"""The `sparsekit` command: parses arguments and renders results; the work is in the stage modules.

Every error a user can cause is a SparsekitError (or a click usage error) and prints as one line
on stderr with a non-zero exit code; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import json
import sys
import traceback
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import bench as B
from . import io, models
from .analyze import COST_UNITS, DEFAULT_GRID, METHODS
from .analyze import analyze as run_analyze
from .calibration import load_calibration
from .convert import convert as run_convert
from .errors import SparsekitError
from .finetune import DEVICES, LOSSES, SCHEDULES, TRAIN_CHOICES  # no torch at import (imported to train)
from .finetune import finetune as run_finetune
from .format import DOMAIN
from .inspection import inspect as run_inspect
from .patterns import PATTERNS
from .prune import prune as run_prune
from .prune import thin_rows_note
from .reconstruct import DEFAULT_DAMP, MATCH_MODES
from .selection import DEFAULT_MIN_PARAMS
from .sessions import make_inputs, parse_shapes

out = Console()
err = Console(stderr=True)

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOTHING_CONVERTED = 3   # convert rewrote no layer (and --allow-empty was not given)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparsekit")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """sparsekit: make ONNX models faster on CPUs with weight sparsity.

    Pipeline: prune (plain ONNX with zeros) -> convert (ai.sparsekit ops) -> bench.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ---------------------------------------------------------------------------------------------
# shared rendering


@contextmanager
def layer_progress(label: str, enabled: bool):
    """A rich progress bar on stderr, fed by a stage's progress(done, total, name) callback."""
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("", total=None)

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, description=name)

        yield update


def print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def _fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _fmt_count(n) -> str:
    if n is None:
        return "?"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _fmt_err(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def calibration_options(f):
    """--calibration and the options that say how to read it (prune, analyze, convert)."""
    f = click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Calibration samples per onnxruntime run (inputs with a symbolic batch dim).")(f)
    f = click.option("--calibration-samples", type=click.IntRange(min=1), default=None,
                     help="Use only the first N calibration samples.")(f)
    f = click.option("--preprocess", type=click.Choice(["imagenet"]), default=None,
                     help="How to turn a folder of images into inputs (resize 256, centre crop 224, "
                          "ImageNet mean/std).")(f)
    return click.option("--calibration", type=click.Path(), default=None, metavar="DATA",
                        help=".npz of input samples keyed by input name, or a folder of images "
                             "(with --preprocess).")(f)


def load_calibration_option(path, preprocess, samples, batch_size, model):
    if path is None:
        if preprocess or samples:
            raise SparsekitError("--preprocess and --calibration-samples need --calibration")
        return None
    return load_calibration(path, model, preprocess=preprocess, batch_size=batch_size, limit=samples)


# ---------------------------------------------------------------------------------------------
# sparsekit prune


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the pruned model.")
@click.option("--pattern", type=click.Choice(PATTERNS), default="block",
              show_default=True, help="Sparsity pattern.")
@click.option("--sparsity", type=float, default=0.9, show_default=True,
              help="Fraction of weights removed in each pruned layer, in [0, 1).")
@click.option("--bank-size", type=int, default=None,
              help="bank: reduction positions per bank (default 64, capped at the row length).")
@click.option("--banks", type=int, default=None, help="bank: number of equal banks per row.")
@click.option("--block", default=None,
              help="Block shape AxB: A reduction positions x B output channels (default 1x4). "
                   "With --pattern bank, 1x4 blocks balanced per bank.")
@click.option("--include", default=None, metavar="REGEX", help="Only prune nodes whose name matches.")
@click.option("--exclude", default=None, metavar="REGEX", help="Never prune nodes whose name matches.")
@click.option("--min-params", type=int, default=DEFAULT_MIN_PARAMS, show_default=True,
              help="Skip layers with fewer weights than this.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON recipe with per-layer pattern and sparsity overrides.")
@click.option("--no-fold-bn", is_flag=True, help="Keep BatchNormalization nodes (no folding).")
@calibration_options
@click.option("--damp", type=click.FloatRange(min=0.0), default=DEFAULT_DAMP, show_default=True,
              help="--calibration: dampening added to the input Gram matrix (fraction of its mean "
                   "diagonal).")
@click.option("--match", type=click.Choice(MATCH_MODES), default="dense", show_default=True,
              help="--calibration: reconstruct the dense model's layer outputs (dense) or the layer's "
                   "own outputs on the pruned inputs (layer).")
@click.option("--channel-correction/--no-channel-correction", default=None,
              help="--calibration: scale each reconstructed output channel's weights so its output "
                   "spread matches the dense model's (with --match layer: the layer's own); the zero "
                   "pattern is kept. Default: on with --match layer only (docs/accuracy.md).")
@click.option("--permute", is_flag=True,
              help="Before pruning in 1x4 (or AxB) blocks, reorder each layer's output channels so "
                   "rows that need the same inputs share a block (where every tensor carrying them "
                   "can follow; the model computes the same; docs/prune.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--external-data/--no-external-data", "external_data", default=None,
              help="Weights in a side file named after OUTPUT (OUTPUT.data), or in the .onnx only "
                   "(an error above 2 GB). Default: as the input has them; always above 2 GB.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def prune(model, output, pattern, sparsity, bank_size, banks, block, include, exclude, min_params,
          recipe, no_fold_bn, calibration, preprocess, calibration_samples, batch_size, damp, match,
          channel_correction, permute, as_json, force, external_data):
    """Prune MODEL's Conv/Gemm/MatMul weights with a sparsity pattern.

    The output is plain ONNX (it runs in stock onnxruntime) with the recipe recorded in its
    metadata for `sparsekit convert`.

    With --calibration DATA (an .npz of input samples keyed by input name, or a folder of
    images with --preprocess imagenet) each layer's mask and kept weights are chosen to keep
    its outputs on that data (one-shot reconstruction, no retraining; docs/accuracy.md).

    Example: sparsekit prune model.onnx -o pruned.onnx --pattern block --sparsity 0.9
    """
    io.check_output_path(output, force, inputs=(model,))
    # weights stay on disk, read one at a time, unless onnxruntime must run the whole model
    source = io.load_model(model, lazy=calibration is None)
    calib = load_calibration_option(calibration, preprocess, calibration_samples, batch_size, source)
    with layer_progress("pruning", enabled=not as_json) as progress:
        pruned, report = run_prune(
            source, pattern=pattern, sparsity=sparsity, bank_size=bank_size, banks=banks,
            block=block, include=include, exclude=exclude, min_params=min_params, recipe=recipe,
            fold_bn=not no_fold_bn, calibration=calib, damp=damp, match=match,
            channel_correction=channel_correction, permute=permute, progress=progress)
    io.save_model(pruned, output, external_data, source=model)
    if as_json:
        print_json({"output": str(output), **report.to_dict()})
        return
    render_prune_report(report)
    out.print(f"wrote [bold]{output}[/bold]")


def render_prune_report(report) -> None:
    d = report.to_dict()
    recon = any(r["error"] is not None for r in d["layers"])
    table = Table(title="pruned layers", show_lines=False)
    cols = [("layer", "left"), ("op", "left"), ("weight", "left"), ("pattern", "left"),
            ("sparsity", "right"), ("params", "right"), ("FLOPs", "right")]
    if recon:   # relative layer output error on the calibration data: magnitude mask vs written
        cols += [("err mag", "right"), ("err rec", "right")]
    scaled = any(r["channel_scale"] for r in d["layers"])
    if scaled:  # the range of channel correction's row scales
        cols.append(("scale", "right"))
    for col, justify in cols:
        table.add_column(col, justify=justify)
    for row in d["layers"]:
        cells = [row["name"], row["op"], "x".join(str(s) for s in row["weight_shape"]),
                 row["pattern"], f"{row['achieved']:.1%}", _fmt_count(row["params"]),
                 _fmt_count(row["flops"])]
        if recon:
            cells += [_fmt_err(row["error_magnitude"]), _fmt_err(row["error"])]
        if scaled:
            lo_hi = row["channel_scale"]
            cells.append(f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f}" if lo_hi else "-")
        table.add_row(*cells)
    out.print(table)
    if d.get("skipped"):
        out.print(f"skipped {len(d['skipped'])} layer(s): " + ", ".join(
            f"{s['name']} ({s['reason']})" for s in d["skipped"][:8])
            + (" ..." if len(d["skipped"]) > 8 else ""))
    for row in report.layers:
        thin = thin_rows_note(row)
        if thin:
            out.print(f"warning: {row.name}: {thin}")
    if report.permuted:   # magnitude's view: the squared weight mass the blocks keep
        before = sum(p.kept_before for p in report.permuted) / len(report.permuted)
        after = sum(p.kept_after for p in report.permuted) / len(report.permuted)
        out.print(f"rows permuted in {len(report.permuted)} layer(s): blocks keep {before:.1%} -> "
                  f"{after:.1%} of their squared weight (mean)")
    t = d["totals"]
    out.print(f"params: {_fmt_count(t['params'])} -> {_fmt_count(t['params_kept'])} "
              f"({t['params_removed_pct']:.1f}% removed); FLOPs: {_fmt_count(t['flops'])} -> "
              f"{_fmt_count(t['flops_kept'])} ({t['flops_removed_pct']:.1f}% removed)")


# ---------------------------------------------------------------------------------------------
# sparsekit analyze


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", type=float, required=True,
              help="Global sparsity to reach over the analysed layers, in (0, 1).")
@click.option("--by", type=click.Choice(COST_UNITS), default="params", show_default=True,
              help="Count the target in weights or in FLOPs.")
@click.option("--pattern", type=click.Choice(PATTERNS), default="block",
              show_default=True, help="Sparsity pattern (as prune).")
@click.option("--bank-size", type=int, default=None, help="bank: reduction positions per bank.")
@click.option("--banks", type=int, default=None, help="bank: number of equal banks per row.")
@click.option("--block", default=None, help="Block shape AxB (default 1x4).")
@click.option("--include", default=None, metavar="REGEX", help="Only analyse nodes whose name matches.")
@click.option("--exclude", default=None, metavar="REGEX", help="Never prune nodes whose name matches.")
@click.option("--min-params", type=int, default=DEFAULT_MIN_PARAMS, show_default=True,
              help="Skip layers with fewer weights than this.")
@calibration_options
@click.option("--grid", default=",".join(str(g) for g in DEFAULT_GRID),
              show_default=True, help="Sparsities each layer is tried at.")
@click.option("--method", type=click.Choice(METHODS), default="reconstruction",
              show_default=True, help="How a layer is pruned for its trials.")
@click.option("--samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="Calibration samples the output comparisons use.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the recipe here (YAML, or JSON for a .json name).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Save the sensitivity curves and the allocation as a PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--force", is_flag=True, help="Overwrite the output files if they exist.")
def analyze(model, target, by, pattern, bank_size, banks, block, include, exclude, min_params,
            calibration, preprocess, calibration_samples, batch_size, grid, method, samples, output,
            plot, as_json, force):
    """Measure each layer's sensitivity to pruning and allocate per-layer sparsities.

    Every layer prune would select is pruned alone at each --grid sparsity and the model's
    outputs on the calibration data are compared with the dense model's; then per-layer
    sparsities reaching --target (in params or FLOPs) with the least predicted error are chosen
    and written as a recipe for `sparsekit prune --recipe`.

    Example: sparsekit analyze model.onnx --calibration calib.npz --target 0.8 -o recipe.yaml
    """
    if calibration is None:
        raise SparsekitError("analyze needs --calibration DATA")
    for path in (output, plot):
        if path is not None:
            io.check_output_path(path, force, inputs=(model,))
    grid_values = _parse_list(grid, float, "--grid")
    source = io.load_model(model)
    calib = load_calibration_option(calibration, preprocess, calibration_samples, batch_size, source)
    with layer_progress("analysing", enabled=not as_json) as progress:
        report = run_analyze(source, calib, target, by=by, pattern=pattern, bank_size=bank_size,
                             banks=banks, block=block, include=include, exclude=exclude,
                             min_params=min_params, grid=grid_values, method=method, samples=samples,
                             progress=progress)
    if output is not None:
        recipe = report.recipe()
        if str(output).lower().endswith(".json"):
            text = json.dumps(recipe, indent=2) + "\n"
        else:
            import yaml
            text = yaml.safe_dump(recipe, sort_keys=False)
        io.save_text(text, output)
    if plot is not None:
        from .plot import plot_sensitivity
        plot_sensitivity(report, plot)
    if as_json:
        print_json({"output": output, "plot": plot, **report.to_dict()})
        return
    table = Table(title=f"sensitivity (model output error, one layer pruned, {method})")
    table.add_column("layer")
    table.add_column(by, justify="right")
    for g in report.grid:
        table.add_column(f"{g:g}", justify="right")
    table.add_column("allocated", justify="right")
    for ls in report.layers:
        table.add_row(ls.name, _fmt_count(ls.params if by == "params" else ls.flops),
                      *[f"{e:.2g}" for e in ls.errors], f"{ls.sparsity:.1%}")
    out.print(table)
    out.print(f"target {report.target:.1%} of {by}: allocated {report.achieved:.2%} "
              f"({report.achieved_counts:.2%} after rounding keep counts to whole weights), "
              f"predicted output error {report.predicted_error:.3g}")
    for path, what in ((output, "recipe"), (plot, "plot")):
        if path is not None:
            out.print(f"wrote {what} [bold]{path}[/bold]")


# ---------------------------------------------------------------------------------------------
# sparsekit convert


def _parse_max_density(values) -> dict:
    out = {}
    for v in values:
        key, sep, num = v.partition("=")
        if not sep or key not in ("block4", "block1"):
            raise SparsekitError(f"--max-density takes block4=D or block1=D, got {v!r}")
        try:
            out[key] = float(num)
        except ValueError:
            raise SparsekitError(f"--max-density {v!r}: {num!r} is not a number") from None
        if not 0.0 <= out[key] <= 1.0:
            raise SparsekitError(f"--max-density {v!r}: density must be in [0, 1]")
    return out


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the sparse model.")
@click.option("--autotune", is_flag=True,
              help="Time dense vs sparse for each layer on this machine and keep the faster.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for --autotune timing (default: onnxruntime's).")
@click.option("--max-density", multiple=True, metavar="FMT=D",
              help="Densest layer still converted, per format: block4=0.6 (1x4 blocks), "
                   "block1=0.3 (single weights). Ignored by --autotune decisions.")
@click.option("--dim", multiple=True, metavar="NAME=N",
              help="--autotune: size of a symbolic input dim while timing (default 1).")
@click.option("--no-depthwise", is_flag=True,
              help="Leave depthwise convs to onnxruntime instead of DepthwiseConv.")
@click.option("--layout", type=click.Choice(["auto", "NCHW", "NCHWc8"]), default=None,
              help="Activations between chained DepthwiseConv / 1x1 SparseConv ops: NCHW, "
                   "8-channel blocks (NCHWc8, a Reorder at each chain edge), or auto: per chain, "
                   "whichever runs faster here (timed with --threads). Default: auto with "
                   "--autotune, else NCHW.")
@click.option("--no-merge", is_flag=True,
              help="In blocked chains, keep each expansion and its depthwise conv as two nodes "
                   "(by default merged into one SparseConvDepthwise on planes of >= 28x28).")
@click.option("--include", default=None, metavar="REGEX", help="Only convert matching nodes.")
@click.option("--exclude", default=None, metavar="REGEX", help="Never convert matching nodes.")
@click.option("--predict-relu", is_flag=True,
              help="Also turn Conv -> ReLU/Clip(0, x) layers that stay dense into PredictedConv "
                   "(int8 prediction, full precision only where positive; docs/predict.md) where "
                   "--calibration shows enough zeros (and, with --autotune, where it is faster).")
@click.option("--min-zeros", type=click.FloatRange(0.0, 1.0), default=None,
              help="--predict-relu: least fraction of zeros after the activation (default 0.7).")
@click.option("--recall", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="--predict-relu: fraction of each layer's positive outputs the prediction "
                   "must keep on the calibration data; sets its margin (default 0.999).")
@click.option("--predict-bits", type=click.IntRange(2, 8), default=None,
              help="--predict-relu: bits of the prediction's weights (default 8: fewer "
                   "outputs to compute for the same recall; 4: a faster prediction on AVX2).")
@calibration_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--external-data/--no-external-data", "external_data", default=None,
              help="Weights in a side file named after OUTPUT (OUTPUT.data), or in the .onnx only "
                   "(an error above 2 GB). Default: as the input has them; always above 2 GB.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--allow-empty", is_flag=True,
              help="Write OUTPUT even when no layer was converted (a copy of MODEL) and exit 0; "
                   "without it that case writes nothing and exits 3.")
def convert(model, output, autotune, threads, max_density, dim, no_depthwise, layout, no_merge,
            include, exclude,
            predict_relu, min_zeros, recall, predict_bits, calibration, preprocess,
            calibration_samples, batch_size, as_json, force, external_data, allow_empty):
    """Rewrite MODEL's sparse layers into ai.sparsekit ops with packed weights.

    Reads the recipe `prune` recorded, or detects 1x4 blocks and bank-balanced rows from the
    zeros (so models pruned by other tools convert too). Fuses bias, BatchNormalization,
    Relu/Clip and residual Adds. Layers where sparse would not be faster stay dense.

    Example: sparsekit convert pruned.onnx -o sparse.onnx
    """

    limits = _parse_max_density(max_density)
    dims = parse_shapes(dim)
    if not predict_relu and (min_zeros is not None or recall is not None
                             or predict_bits is not None or calibration):
        raise SparsekitError("--min-zeros, --recall, --predict-bits and --calibration are for "
                             "--predict-relu")
    io.check_output_path(output, force, inputs=(model,))
    source = io.load_model(model, lazy=not predict_relu)
    calib = load_calibration_option(calibration, preprocess, calibration_samples, batch_size,
                                    source)
    if predict_relu and calib is None:
        raise SparsekitError("--predict-relu needs --calibration DATA: whether a layer's outputs "
                             "are mostly zero is measured on real inputs")
    predict = {} if not predict_relu else {
        "predict_relu": True, "calibration": calib,
        **({} if min_zeros is None else {"min_zeros": min_zeros}),
        **({} if recall is None else {"recall": recall}),
        **({} if predict_bits is None else {"predict_bits": predict_bits})}
    with layer_progress("converting", enabled=not as_json) as progress:
        converted, report = run_convert(source, max_density=limits, autotune=autotune,
                                        threads=threads, depthwise=not no_depthwise,
                                        include=include, exclude=exclude, autotune_dims=dims,
                                        layout=layout, merge=not no_merge, progress=progress,
                                        **predict)
    empty = report.nothing_converted
    written = empty is None or allow_empty
    if written:
        io.save_model(converted, output, external_data, source=model)
    if as_json:
        print_json({"output": str(output) if written else None, "nothing_converted": empty,
                    **report.to_dict()})
    else:
        _render_convert_report(report, autotune)
        if report.predicted is not None:
            _render_predicted(report.predicted, autotune)
        if written:
            out.print(f"wrote [bold]{output}[/bold]")
    if empty is not None and allow_empty:
        click.echo(f"warning: {empty}", err=True)
    elif empty is not None:
        # one line on stderr and a non-zero exit, so scripts notice a conversion that did nothing
        e = SparsekitError(f"{empty}; {output} not written (--allow-empty writes it)")
        e.exit_code = EXIT_NOTHING_CONVERTED
        raise e


def _render_convert_report(report, autotune: bool) -> None:
    table = Table(title="layers")
    cols = ["layer", "op", "result", "format", "density", "fused", "bytes"]
    if autotune:
        cols += ["dense ms", "sparse ms"]
    for col in cols + ["why"]:
        table.add_column(col, justify="right" if col in ("density", "bytes", "dense ms",
                                                         "sparse ms") else "left")
    for l in report.layers:
        size = (f"{_fmt_count(l.dense_bytes)}->{_fmt_count(l.sparse_bytes)}"
                if l.decision == "sparse" else _fmt_count(l.dense_bytes))
        cells = [l.name, l.op, l.decision, l.format or "-", f"{l.density:.2f}", l.fused or "-",
                 size]
        if autotune:
            cells += [_fmt_ms(l.dense_ms), _fmt_ms(l.sparse_ms)]
        table.add_row(*cells, l.reason + (f" ({l.note})" if getattr(l, "note", "") else ""))
    out.print(table)
    if report.skipped:
        out.print(f"skipped {len(report.skipped)} layer(s): " + ", ".join(
            f"{s['name']} ({s['reason']})" for s in report.skipped[:8])
            + (" ..." if len(report.skipped) > 8 else ""))
    if report.chains:
        _render_chains(report.chains)
    for note in report.notes:
        out.print(f"note: {note}")
    t = report.totals
    ratio = t["converted_bytes_ratio"]
    out.print(f"converted {t['converted']} layer(s), {t['depthwise']} depthwise, "
              f"kept {t['kept_dense']} dense; converted weights "
              f"{_fmt_count(t['converted_dense_bytes'])}B -> {_fmt_count(t['converted_sparse_bytes'])}B"
              + (f" ({ratio:.3f}x)" if ratio is not None else ""))


def _render_chains(chains) -> None:
    table = Table(title="chains (activation layout)")
    for col in ("first op", "last op", "ops", "layout", "NCHW ms", "NCHWc8 ms", "why"):
        table.add_column(col, justify="right" if col in ("ops", "NCHW ms", "NCHWc8 ms")
                         else "left")
    for c in chains:
        table.add_row(c.nodes[0], c.nodes[-1], str(len(c.nodes)), c.layout,
                      _fmt_ms(c.nchw_ms), _fmt_ms(c.blocked_ms), c.reason)
    out.print(table)


def _render_predicted(predicted, autotune: bool) -> None:
    ptable = Table(title="ReLU-output prediction (--predict-relu)")
    nums = ("unneeded", "margin", "recall", "computed", "dense ms", "predicted ms")
    for col in ["layer", "weight", "result", "unneeded", "margin", "recall", "computed"] + (
            ["dense ms", "predicted ms"] if autotune else []) + ["why"]:
        ptable.add_column(col, justify="right" if col in nums else "left")
    for r in predicted:
        cells = [r.name, "x".join(map(str, r.weight_shape)),
                 "predicted" if r.replaced else "dense",
                 "-" if r.zeros is None else f"{r.zeros:.0%}",
                 "-" if r.margin is None else str(r.margin),
                 "-" if r.recall is None else f"{r.recall:.2%}",
                 "-" if r.computed is None else f"{r.computed:.0%}"]
        if autotune:
            cells += [_fmt_ms(r.dense_ms), _fmt_ms(r.predicted_ms)]
        ptable.add_row(*cells, r.reason)
    out.print(ptable)
    out.print("unneeded: outputs after the activation that are 0 (or no MaxPool window's "
              "max) on the calibration data; recall: positive outputs (window maxima) the "
              "margin keeps; computed: outputs done in full precision")
    out.print(f"predicted {sum(r.replaced for r in predicted)} of {len(predicted)} "
              "eligible layer(s)")


# ---------------------------------------------------------------------------------------------
# sparsekit inspect


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model, as_json):
    """Per-layer table for any model, dense or sparse: shape, sparsity, pattern, format, bytes.

    Example: sparsekit inspect sparse.onnx
    """

    report = run_inspect(io.load_model(model, lazy=True))
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=str(model))
    for col in ("layer", "op", "shape", "sparsity", "pattern", "format", "bytes"):
        table.add_column(col, justify="right" if col in ("sparsity", "bytes") else "left")
    for l in report.layers:
        table.add_row(l.name, l.op, "x".join(map(str, l.shape)), f"{l.sparsity:.1%}", l.pattern,
                      l.format or "dense", _fmt_count(l.bytes))
    out.print(table)
    t = report.totals
    out.print(f"{t['layers']} layers ({t['converted']} converted), {_fmt_count(t['params'])} "
              f"weights, {t['sparsity']:.1%} zero; weights {_fmt_count(t['weight_bytes'])}B "
              f"(dense {_fmt_count(t['dense_weight_bytes'])}B); file {_fmt_count(t['model_bytes'])}B")


# ---------------------------------------------------------------------------------------------
# sparsekit bench


def _parse_list(text: str, kind, what: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SparsekitError(f"{what}: expected a comma-separated list, got {text!r}") from None
    if not values:
        raise SparsekitError(f"{what}: empty list")
    return values


@cli.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--against", type=click.Path(dir_okay=False), default=None,
              help="The dense model to compare with (default: MODEL itself when MODEL is dense; "
                   "it is then pruned and converted first).")
@click.option("--device", default="cpu", show_default=True, help="Where to run (cpu).")
@click.option("--threads", default="1", show_default=True, help="Thread counts, e.g. 1,2.")
@click.option("--runs", type=click.IntRange(min=3), default=50, show_default=True,
              help="Timed rounds per thread count (each round runs both models).")
@click.option("--burst", type=click.IntRange(min=1), default=5, show_default=True,
              help="Runs of each model back to back per round: the speedup is from the warm "
                   "runs (2..N, a model served in a loop); the first, after the other model "
                   "ran, is reported as 'cold'.  1: single runs round-robin, no split.")
@click.option("--seconds", type=float, default=None, help="Stop a thread count's rounds after this long.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--shape", multiple=True, metavar="NAME=N", help="Size of a symbolic input dim.")
@click.option("--inputs", "inputs_npz", type=click.Path(dir_okay=False), default=None,
              help="An .npz of input arrays keyed by input name.")
@click.option("--zoo", default=None, help="Benchmark a built-in model (see `sparsekit zoo`).")
@click.option("--pattern", multiple=True, type=click.Choice(["block", "bank", "unstructured"]),
              help="Pattern for --zoo / dense MODEL (default block; --sweep: block and bank).")
@click.option("--sparsity", type=float, default=0.9, show_default=True,
              help="Sparsity for --zoo / dense MODEL.")
@click.option("--sweep", default=None, metavar="S1,S2,...",
              help="Prune, convert and bench at each sparsity; print/plot speedup vs sparsity.")
@click.option("--layout", type=click.Choice(["auto", "NCHW", "NCHWc8"]), default="auto",
              show_default=True,
              help="A dense MODEL or --zoo: convert's activation layout (auto: per chain, the "
                   "faster one at the first --threads count; see `sparsekit convert --help`).")
@click.option("--no-profile", is_flag=True, help="Skip the per-op breakdown.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory measurement.")
@click.option("--no-pin", is_flag=True,
              help="Leave threads unpinned (default: this process's thread on its first CPU, "
                   "onnxruntime's pool workers on the next ones, for both sides).")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Draw the comparison to this PNG (needs matplotlib).")
def bench(model, against, device, threads, runs, burst, seconds, warmup, shape, inputs_npz, zoo,
          pattern, sparsity, sweep, layout, no_profile, no_memory, no_pin, as_json, plot):
    """Time a sparse model against dense onnxruntime, side by side, and report the speedup.

    \b
    Examples:
      sparsekit bench --zoo mobilenet_v1 --pattern block --sparsity 0.9
      sparsekit bench sparse.onnx --against pruned.onnx --threads 1,2
      sparsekit bench --zoo mobilenet_v1 --sweep 0.5,0.7,0.8,0.9,0.95 --plot sweep.png
    """

    B.check_device(device)
    thread_list = _parse_list(threads, int, "--threads")
    if any(t < 1 for t in thread_list):
        raise SparsekitError("--threads: thread counts must be >= 1")
    shapes = parse_shapes(shape)
    if zoo and model:
        raise SparsekitError("give either MODEL or --zoo, not both")
    if not zoo and not model:
        raise SparsekitError("nothing to benchmark: give MODEL or --zoo NAME")
    if not 0.0 <= sparsity < 1.0:
        raise SparsekitError(f"--sparsity must be in [0, 1), got {sparsity}")
    patterns = list(pattern) or (["block", "bank"] if sweep else ["block"])
    label = zoo or str(model)

    if zoo:
        dense = B.zoo_model(zoo)
    else:
        dense = io.load_model(model)
    is_sparse = any(n.domain == DOMAIN for n in dense.graph.node)
    feeds = make_inputs(io.load_model(against) if against else dense, shapes, inputs_npz)

    if sweep:
        if is_sparse:
            raise SparsekitError("--sweep needs a dense model (or --zoo), not a converted one")
        levels = _parse_list(sweep, float, "--sweep")
        if any(not 0.0 <= v < 1.0 for v in levels):
            raise SparsekitError("--sweep: every sparsity must be in [0, 1)")
        with layer_progress("sweep", enabled=not as_json) as progress:
            points = B.sweep(dense, levels, patterns, threads=thread_list,
                             runs=min(runs, 20), seconds=seconds, feeds=feeds, progress=progress,
                             pin=not no_pin, burst=burst)
        if plot:
            from .plot import plot_sweep
            plot_sweep(points, plot, title=f"{label}: speedup vs sparsity")
        if as_json:
            print_json({"model": label, "points": [p.to_dict() for p in points],
                        "environment": B.environment()})
            return
        table = Table(title=f"{label}: speedup vs sparsity (dense median / sparse median)")
        table.add_column("pattern")
        table.add_column("threads", justify="right")
        for v in levels:
            table.add_column(f"{v:g}", justify="right")
        for pat in patterns:
            for t in thread_list:
                row = {p.sparsity: p.speedup for p in points if p.pattern == pat and p.threads == t}
                table.add_row(pat, str(t), *[f"{row[v]:.2f}x" for v in levels])
        out.print(table)
        if plot:
            out.print(f"wrote [bold]{plot}[/bold]")
        return

    if is_sparse:
        if not against:
            raise SparsekitError("MODEL is already converted: give the dense model with --against")
        sparse_m, dense_m = dense, io.load_model(against)
    elif against:
        raise SparsekitError("MODEL is dense: --against is for comparing a converted MODEL")
    else:
        dense_m, sparse_m, _, _ = B.prepare(dense, patterns[0], sparsity, layout=layout,
                                            threads=thread_list[0])
        label = f"{label} ({patterns[0]} {sparsity:g})"
    with layer_progress("timing", enabled=not as_json) as progress:
        report = B.bench(sparse_m, dense_m, threads=thread_list, runs=runs, seconds=seconds,
                         warmup=warmup, feeds=feeds, profile=not no_profile, pin=not no_pin,
                         memory=not no_memory, label=label, progress=progress, burst=burst)
    agreement = B.max_relative_difference(dense_m, sparse_m, feeds, thread_list[0])
    if plot:
        from .plot import plot_bench
        plot_bench(report, plot)
    if as_json:
        print_json({**report.to_dict(), "max_relative_difference": agreement})
        return
    render_bench(report, agreement)
    if plot:
        out.print(f"wrote [bold]{plot}[/bold]")


def render_bench(report, agreement: float) -> None:
    table = Table(title=f"{report.label}: dense onnxruntime vs sparsekit (ms)")
    for col in ("threads", "dense median", "p90", "min", "sparse median", "p90", "min",
                "speedup", "per-round q1-q3"):
        table.add_column(col, justify="right")
    for r in report.results:
        table.add_row(str(r.threads), f"{r.dense.median:.3f}", f"{r.dense.p90:.3f}",
                      f"{r.dense.min:.3f}", f"{r.sparse.median:.3f}", f"{r.sparse.p90:.3f}",
                      f"{r.sparse.min:.3f}", f"[bold]{r.speedup:.2f}x[/bold]",
                      f"{r.round_ratio_q1:.2f}-{r.round_ratio_q3:.2f}")
    out.print(table)
    for r in report.results:
        if r.cold_speedup is not None:
            out.print(f"{r.threads} thread(s), cold (each burst's first run, after the other "
                      f"model): dense {r.cold_dense.median:.3f} ms, sparse "
                      f"{r.cold_sparse.median:.3f} ms, {r.cold_speedup:.2f}x")
    for r in report.results:
        if not r.dense_top_ops:
            continue
        ops = Table(title=f"top ops, {r.threads} thread(s) (ms per run, from onnxruntime's profiler)")
        for col in ("dense op", "nodes", "ms", "sparse op", "nodes", "ms"):
            ops.add_column(col, justify="right" if col in ("nodes", "ms") else "left")
        n = max(len(r.dense_top_ops), len(r.sparse_top_ops))
        for i in range(n):
            d = r.dense_top_ops[i] if i < len(r.dense_top_ops) else None
            s = r.sparse_top_ops[i] if i < len(r.sparse_top_ops) else None
            ops.add_row(d["op"] if d else "", str(d["nodes"]) if d else "",
                        f"{d['ms']:.3f}" if d else "", s["op"] if s else "",
                        str(s["nodes"]) if s else "", f"{s['ms']:.3f}" if s else "")
        out.print(ops)
    e, f, m = report.environment, report.files, report.memory
    out.print(f"kernels: {e['isa']}; onnxruntime {e['onnxruntime']}; {e['cpu']} ({e['cores']} cores)")
    out.print(f"files: dense {_fmt_count(f['dense_bytes'])}B, sparse {_fmt_count(f['sparse_bytes'])}B"
              + (f"; peak memory: dense {_fmt_count(m['dense_peak_rss'])}B, sparse "
                 f"{_fmt_count(m['sparse_peak_rss'])}B" if m else ""))
    out.print(f"outputs agree: max relative difference {agreement:.2e}")


# ---------------------------------------------------------------------------------------------
# sparsekit zoo


@cli.command()
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the model here (default: NAME.onnx).")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--json", "as_json", is_flag=True, help="List the zoo as JSON.")
def zoo(name, output, force, as_json):
    """List the built-in reference models, or write one to an .onnx file.

    Example: sparsekit zoo mobilenet_v1 -o mobilenet_v1.onnx
    """

    if name is None:
        rows = [{"name": n, "description": models.describe(n)} for n in models.names()]
        if as_json:
            print_json(rows)
            return
        table = Table(title="sparsekit zoo")
        table.add_column("name")
        table.add_column("description")
        for r in rows:
            table.add_row(r["name"], r["description"])
        out.print(table)
        return
    output = output or f"{name}.onnx"
    io.check_output_path(output, force)
    model = models.build(name)
    io.save_model(model, output)
    if as_json:
        print_json({"name": name, "output": str(output)})
    else:
        out.print(f"wrote [bold]{output}[/bold] ({name}: {models.describe(name)})")


# ---------------------------------------------------------------------------------------------
# sparsekit finetune


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the fine-tuned model.")
@click.option("--teacher", required=True, type=click.Path(dir_okay=False),
              help="The dense model whose outputs the pruned one learns to reproduce.")
@click.option("--data", required=True, type=click.Path(), metavar="DATA",
              help="A folder of images (with --preprocess) or an .npz of input samples, as "
                   "prune --calibration takes. No labels.")
@click.option("--preprocess", type=click.Choice(["imagenet"]), default=None,
              help="DATA is a folder of images for an ImageNet-style input.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Training steps (stops at --steps or --seconds, whichever comes first).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Training time budget in seconds.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Samples per step.")
@click.option("--lr", type=click.FloatRange(min=0.0), default=1e-4, show_default=True,
              help="Adam learning rate (warm-up, then --schedule over the budget).")
@click.option("--relative-lr", is_flag=True,
              help="--lr is a step relative to each output channel's weight scale (per tensor for "
                   "biases), not an absolute one: suits models with folded BatchNorms.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True,
              help="Learning-rate schedule.")
@click.option("--train", "train_layers", type=click.Choice(TRAIN_CHOICES), default="all",
              show_default=True,
              help="all: every layer's weights and biases train; pruned: only the pruned layers' "
                   "(layers left dense keep the teacher's values).")
@click.option("--loss", type=click.Choice(LOSSES), default="auto", show_default=True,
              help="auto: KL on softened class scores, MSE on other outputs.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Softmax temperature of the KL loss.")
@click.option("--features", "feature_weight", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="Weight of an extra loss on the pruned layers' outputs (0: off).")
@click.option("--no-augment", is_flag=True, help="Use the samples as they are (no crops, flips, mixing).")
@click.option("--mix", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Fraction of samples mixed with another one (mixup / cutmix).")
@click.option("--synthetic", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Fraction of each image batch replaced by procedural images (dead leaves, 1/f noise).")
@click.option("--train-size", type=click.IntRange(min=1), default=None, metavar="PIXELS",
              help="Train on PIXELSxPIXELS crops (a folder of images; e.g. 160 for a 224 model: "
                   "several times faster per step); evaluation stays at the model's size.")
@click.option("--full-size-last", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0,
              show_default=True, metavar="FRACTION",
              help="With --train-size: train the last FRACTION of the budget at the model's own "
                   "size (progressive resizing: small crops buy steps, the end adapts to full size).")
@click.option("--ema", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True,
              metavar="DECAY",
              help="Write the exponential moving average of the weights over the steps (decay "
                   "per step, e.g. 0.999) instead of the last step's weights (0: off).")
@click.option("--invert", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Before training, synthesise N images from the teacher alone (model inversion: "
                   "its BatchNorm statistics, random classes, a smoothness prior) and add them to "
                   "the training photos; image folders only. Takes time on top of the budget.")
@click.option("--invert-steps", type=click.IntRange(min=1), default=100, show_default=True,
              help="--invert: optimisation steps per batch of images.")
@click.option("--invert-size", type=click.IntRange(min=8), default=None, metavar="PIXELS",
              help="--invert: image size (default: the training size).")
@click.option("--holdout", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="Fraction of the photos/samples held back for the before/after comparison.")
@click.option("--eval-data", type=click.Path(), default=None,
              help="A separate evaluation set instead of --holdout (same kind as DATA).")
@click.option("--eval-crops", type=click.IntRange(min=1), default=8, show_default=True,
              help="Evaluation crops per held-back photo (the centre crop, then fixed random ones).")
@click.option("--sparsity", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=None,
              help="Gradual pruning: raise every pruned layer to this sparsity during training "
                   "(cubic ramp, the patterns prune recorded).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads (torch and the teacher).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the student trains (cuda needs a CUDA build of torch).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data stream.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint file (default OUTPUT.ckpt), written every --checkpoint-every seconds "
                   "and on Ctrl-C.")
@click.option("--checkpoint-every", type=click.FloatRange(min=1.0), default=300.0, show_default=True,
              help="Seconds between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--external-data/--no-external-data", "external_data", default=None,
              help="Weights in a side file named after OUTPUT (OUTPUT.data), or in the .onnx only "
                   "(an error above 2 GB). Default: as the input has them; always above 2 GB.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def finetune(model, output, teacher, data, preprocess, steps, seconds, batch_size, lr, relative_lr,
             schedule, train_layers, loss,
             temperature, feature_weight, no_augment, mix, synthetic, train_size, full_size_last,
             ema, invert, invert_steps,
             invert_size, holdout, eval_data,
             eval_crops, sparsity, threads, device, seed, checkpoint, checkpoint_every, resume, as_json,
             force, external_data):
    """Fine-tune a pruned MODEL towards its dense --teacher on unlabelled --data.

    The pruned model's zeros stay zeros (pattern and recipe metadata kept; convert packs the
    output as it packs MODEL); only initializer values change. Distillation: KL on the
    teacher's softened class scores (MSE for other outputs), the teacher run by onnxruntime on
    the same augmented batch. Needs PyTorch: pip install 'sparsekit[train]'.

    Example: sparsekit finetune pruned.onnx -o tuned.onnx --teacher model.onnx --data photos/
    --preprocess imagenet --seconds 600
    """

    io.check_output_path(output, force, inputs=(model, teacher))
    ckpt = checkpoint or f"{output}.ckpt"
    student, dense = io.load_model(model), io.load_model(teacher)
    with _training_progress(enabled=not as_json) as progress:
        tuned, report = run_finetune(
            student, dense, data, preprocess=preprocess, steps=steps, seconds=seconds,
            batch_size=batch_size, lr=lr, relative_lr=relative_lr, schedule=schedule,
            train=train_layers,
            temperature=temperature, loss=loss,
            feature_weight=feature_weight, augment=not no_augment, mix=mix, synthetic=synthetic,
            train_size=train_size, full_size_last=full_size_last, ema=ema,
            invert=invert, invert_steps=invert_steps, invert_size=invert_size,
            holdout=holdout, eval_data=eval_data, eval_crops=eval_crops,
            sparsity=sparsity, threads=threads, device=device, seed=seed, checkpoint=ckpt,
            checkpoint_every=checkpoint_every, resume=resume, progress=progress)
    io.save_model(tuned, output, external_data, source=model)
    import os
    if os.path.exists(ckpt):   # the job is done: its checkpoint would only be a stale file
        os.unlink(ckpt)
    if as_json:
        print_json({"output": str(output), **report.to_dict()})
        return
    render_finetune_report(report)
    out.print(f"wrote [bold]{output}[/bold]")


@contextmanager
def _training_progress(enabled: bool):
    """A bar over the training budget (steps or seconds) with loss and throughput."""
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn("[bold]fine-tuning"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("", total=1.0)

        def update(info) -> None:
            if info.get("phase") == "invert":  # images from the teacher, before training
                bar.update(task, completed=info["position"],
                           description=f"synthesising images: step {info['step']}  "
                                       f"loss {info['loss']:.4f}")
                return
            bar.update(task, completed=info["position"],
                       description=f"step {info['step']}  loss {info['loss']:.4f}  "
                                   f"{info['images_per_second']:.1f} img/s")

        yield update


def render_finetune_report(report) -> None:
    d = report.to_dict()
    table = Table(title="teacher agreement on held-back samples")
    for col in ("", "top-1 agreement", "KL", "output error"):
        table.add_column(col, justify="right" if col else "left")

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    for label in ("before", "after"):
        a = d[label]
        table.add_row(label, pct(a["agreement"]), _fmt_err(a["kl"]), _fmt_err(a["rel_error"]))
    if d["eval_source"]:
        out.print(table)
        out.print(f"evaluation: {d['eval_source']}")
    layers = Table(title="pruned layers")
    for col, justify in (("layer", "left"), ("weight", "left"), ("sparsity", "right"),
                         ("weight change", "right")):
        layers.add_column(col, justify=justify)
    for r in d["layers"]:
        sp = f"{r['sparsity_before']:.1%}" if abs(r["sparsity_before"] - r["sparsity_after"]) < 1e-9 else \
            f"{r['sparsity_before']:.1%} -> {r['sparsity_after']:.1%}"
        layers.add_row(r["name"], r["weight"], sp, f"{r['rel_change']:.3f}")
    out.print(layers)
    out.print(f"{d['steps']} steps ({d['stopped_by']}), {d['images']} samples from {d['train_count']} "
              f"training photos/samples, {d['seconds']:.0f} s; loss {_fmt_err(d['loss_first'])} -> "
              f"{_fmt_err(d['loss_last'])}")
    inv = d.get("inversion")
    if inv:
        out.print(f"synthesised {inv['images']} images from the teacher ({inv['statistics']} "
                  f"statistics of {inv['layers']} layers, {inv['steps']} steps each batch) in "
                  f"{inv['seconds']:.0f} s, loss {_fmt_err(inv['loss_first'])} -> "
                  f"{_fmt_err(inv['loss_last'])}; they are among the training photos above")
    for n in d["notes"]:
        out.print(f"note: {n}")


# ---------------------------------------------------------------------------------------------
# entry point


def main(argv=None) -> int:
    """Console entry point: one-line errors, exit codes, --debug for tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="sparsekit", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        err.print("aborted")
        return 130
    except click.UsageError as e:
        if debug:
            raise
        hint = f" (see 'sparsekit {e.ctx.info_name} --help')" if e.ctx is not None and \
            e.ctx.parent is not None else " (see 'sparsekit --help')"
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        return EXIT_USAGE
    except SparsekitError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return getattr(e, "exit_code", EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as e:  # a bug of ours: still one line unless --debug
        if debug:
            traceback.print_exc()
            return EXIT_ERROR
        click.echo(f"error: internal error: {type(e).__name__}: {e} "
                   "(run with --debug for the traceback)", err=True)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
