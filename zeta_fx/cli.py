"""The ``zeta-fx`` command line: ``demo``, ``rules``, ``plan`` and ``gate``.

    $ zeta-fx demo            # reports for the built-in models, nothing to pass
    $ zeta-fx rules           # the registered rules with one-line descriptions
    $ zeta-fx plan torchvision.models:resnet50 --draw resnet50.svg
    $ zeta-fx plan my_pkg.models:build --kw depth=12 --input-shape 1,3,224,224 --format json
    $ zeta-fx plan mymodels:Net --leaf encoder.* --leaf my_pkg.layers:Gate
    $ zeta-fx plan my_pkg:gpt --init "scaled_normal(std=0.02)"
    $ zeta-fx plan my_pkg:llama --input-shape 1,16 --dtype int64 \\
          --input-kw attention_mask=1,16:int64 --forward-kw use_cache=False
    $ zeta-fx gate torchvision.models:resnet18   # where the gates would go; writes nothing

``plan`` builds the user's model from ``package.module:factory`` (keyword arguments with
``--kw name=value``, values read as Python literals), runs the pass as a dry run, and
prints the report; it never writes the model's weights anywhere, it only prints and saves
the plan and the picture. Like ``python -m``, it finds modules in the current directory.
Errors are one line on stderr and exit code 2 (``--debug`` adds the traceback).

The user's code (importing the factory's module, the factory, the model's forward during
capture) runs with its ``print`` output sent to stderr, so ``--format json`` on stdout is
always one JSON document; a ``sys.exit(...)`` in it, with any code, is an error naming the
factory (exit code 2), never a silent exit. A closed pipe (``zeta-fx plan ... | head``)
ends the program quietly, as Unix tools do (exit code 141, 128 + SIGPIPE).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import difflib
import importlib
import json
import os
import signal
import sys
import traceback
from typing import Any, Callable, Sequence

import torch
from tabulate import tabulate_formats
from torch import nn

from zeta_fx import inits
from zeta_fx.api import init_pass, zero_init_pass
from zeta_fx.gates.entry import gate_residuals
from zeta_fx.gates.report import GatesReport
from zeta_fx.capture.methods import CAPTURE_METHODS, LeafSpec
from zeta_fx.errors import CaptureError, UnknownModuleError, ZetaFxError
from zeta_fx.models import GPT, SEResNet
from zeta_fx.rules.base import get_rule
from zeta_fx.rules.registry import ALIASES, list_rules
from zeta_fx.report.picture.render import check_folder
from zeta_fx.capture import check_module_names

__all__ = ["main", "DEMO_MODELS", "load_factory", "parse_kwargs", "parse_shape", "parse_leaf",
           "parse_init", "parse_input_kw"]


_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "bool": torch.bool}


class UsageError(Exception):
    """A bad argument of the command line: printed as one line, exit code 2."""

DEMO_MODELS: dict[str, Callable[[], nn.Module]] = {
    "se_resnet": SEResNet,
    "gpt": lambda: GPT(n_layer=4),
}


def _demo(args: argparse.Namespace) -> int:
    names = args.models or list(DEMO_MODELS)
    for name in names:
        if name not in DEMO_MODELS:
            print(f"zeta-fx demo: unknown model {name!r}; choose from "
                  f"{', '.join(DEMO_MODELS)}", file=sys.stderr)
            return 2
        torch.manual_seed(0)
        model = DEMO_MODELS[name]()
        report = zero_init_pass(model, rule=args.rule)
        print(f"== {name}: {type(model).__name__}, rule {args.rule}")
        print(report.table(args.format))
        print()
    return 0


def _rules(args: argparse.Namespace) -> int:
    for name, description in list_rules().items():
        print(f"{name:24s} {description}")
    for alias, name in ALIASES.items():
        print(f"{alias:24s} alias of {name}")
    return 0


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``package.module:attr`` (``attr`` may be dotted).

    >>> load_factory("torch.nn:Linear").__name__
    'Linear'
    """
    obj = _resolve(spec, "factory", "torchvision.models:resnet50")
    if not callable(obj):
        raise UsageError(f"{spec!r} is a {type(obj).__name__}, not a callable that returns an "
                         "nn.Module")
    return obj


def _resolve(spec: str, kind: str, example: str) -> Any:
    """The object named by ``package.module:attr`` (``attr`` a ``kind``, like ``example``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{spec!r} is not package.module:{kind} (for example {example})")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc} (is it installed, in "
                         "the current directory, or on PYTHONPATH?)") from exc
    except SystemExit as exc:
        raise UsageError(f"importing module {module_name!r} (for {spec}) called "
                         f"sys.exit({exc.code!r}); it must import without exiting") from None
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{where!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
        where = f"{where}:{part}" if where == module_name else f"{where}.{part}"
    return obj


def parse_kwargs(items: Sequence[str], flag: str = "--kw") -> dict[str, Any]:
    """``["num_classes=10", "norm=batch"]`` -> ``{"num_classes": 10, "norm": "batch"}``.

    Values are Python literals (``10``, ``None``, ``(1, 2)``, ``'x'``); anything else is
    taken as a plain string.

    >>> parse_kwargs(["num_classes=10", "weights=None", "norm=batch", "dims=(2, 2)"])
    {'num_classes': 10, 'weights': None, 'norm': 'batch', 'dims': (2, 2)}
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            example = "use_cache=False" if flag == "--forward-kw" else "num_classes=10"
            raise UsageError(f"{flag} {item!r}: expected name=value (for example "
                             f"{flag} {example})")
        try:
            out[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            out[name] = text.strip()
    return out


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; ``x`` works as a separator too.

    >>> parse_shape("1,3,224,224"), parse_shape("2x8")
    ((1, 3, 224, 224), (2, 8))
    """
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 0 for d in shape):
        raise UsageError(f"--input-shape {text!r}: expected comma-separated non-negative "
                         "integers, like 1,3,224,224")
    return shape


_INITS = ("zero", "scaled_normal", "fixup")


def parse_init(text: str) -> Any:
    """An ``--init`` value: ``zero``, ``scaled_normal(std=0.02)``, ``fixup()`` (a call with
    literal arguments; a bare name is called with its defaults).

    >>> parse_init("zero"), parse_init("scaled_normal(std=0.01)").name, parse_init("fixup").name
    ('zero', 'scaled_normal(std=0.01)', 'fixup()')
    """
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        tree = None
    name = tree.id if isinstance(tree, ast.Name) else (
        tree.func.id if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) else None)
    if name not in _INITS:
        close = difflib.get_close_matches(str(name or text), list(_INITS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"--init {text!r} is not one of zero, scaled_normal(std=...), "
                         f"fixup(){hint}")
    if name == "zero":
        if isinstance(tree, ast.Call):
            raise UsageError(f"--init {text!r}: zero takes no arguments; write --init zero")
        return "zero"
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if isinstance(tree, ast.Call):
        try:
            args = [ast.literal_eval(a) for a in tree.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
        except ValueError:
            raise UsageError(f"--init {text!r}: arguments must be Python literals, like "
                             "scaled_normal(std=0.02)") from None
    try:
        return getattr(inits, name)(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--init {text!r}: {_one_line(exc)}") from None


def parse_input_kw(text: str, default_dtype: str = "float32") -> tuple[str, tuple[int, ...],
                                                                        torch.dtype]:
    """An ``--input-kw`` value ``NAME=SHAPE[:DTYPE]``: a tensor passed to forward by keyword.

    >>> parse_input_kw("attention_mask=1,16:int64")
    ('attention_mask', (1, 16), torch.int64)
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier() or not rest.strip():
        raise UsageError(f"--input-kw {text!r}: expected NAME=SHAPE[:DTYPE] (for example "
                         "--input-kw attention_mask=1,16:int64)")
    shape_text, _, dtype = rest.partition(":")
    dtype = (dtype or default_dtype).strip()
    if dtype not in _DTYPES:
        raise UsageError(f"--input-kw {text!r}: dtype {dtype!r} is not one of "
                         f"{', '.join(_DTYPES)}")
    try:
        shape = parse_shape(shape_text)
    except UsageError:
        raise UsageError(f"--input-kw {text!r}: the shape {shape_text!r} is not "
                         "comma-separated non-negative integers, like 1,16") from None
    return name, shape, _DTYPES[dtype]


def parse_leaf(text: str) -> LeafSpec:
    """A ``--leaf`` value: a module FQN (``encoder.gate``, or ``encoder.*`` for everything
    under ``encoder``) stays a string; ``package.module:Class`` is imported.

    >>> parse_leaf("blocks.*"), parse_leaf("torch.nn:MultiheadAttention").__name__
    ('blocks.*', 'MultiheadAttention')
    """
    text = text.strip()
    if ":" not in text:
        if not text or not all(part.isidentifier() or part.isdigit() or part == "*"
                               for part in text.split(".")):
            raise UsageError(f"--leaf {text!r}: expected a module FQN (blocks.0.gate, or "
                             "blocks.* for all under blocks) or package.module:Class")
        return text
    cls = _resolve(text, "Class", "torch.nn:MultiheadAttention")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UsageError(f"--leaf {text!r} is a {type(cls).__name__}, not an nn.Module "
                         "subclass")
    return cls


def _check_names(leaves: Sequence[LeafSpec], focus: Sequence[str], model: nn.Module) -> None:
    """A --leaf or --focus that names no module would silently do nothing: say so instead,
    with the nearest names."""
    try:
        check_module_names(model, leaf_modules=leaves, focus=focus, leaf_label="--leaf",
                           focus_label="--focus")
    except UnknownModuleError as exc:
        raise UsageError(str(exc).replace("nothing was traced or written",
                                          "nothing was run")) from None


def _cwd_on_path() -> None:
    """Put the current directory first on ``sys.path``, as ``python -m`` does.

    An installed ``zeta-fx`` script starts with its own ``bin`` folder there instead, so
    ``zeta-fx plan mymodels:Net`` would not find ``./mymodels.py``.
    """
    cwd = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.insert(0, cwd)


def _example_input(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)  # valid token ids, valid masks


def _build_model(spec: str, kwargs: dict[str, Any], device: str) -> nn.Module:
    factory = load_factory(spec)
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        with torch.device(device):
            model = factory(**kwargs)
    except Exception as exc:
        raise UsageError(f"calling {spec}({shown}) failed: {type(exc).__name__}: "
                         f"{_one_line(exc)}") from exc
    except SystemExit as exc:  # sys.exit(0) too: a factory returns a model, never exits
        raise UsageError(f"calling {spec}({shown}) called sys.exit({exc.code!r}) instead of "
                         "returning an nn.Module; a factory must return the model") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"{spec}({shown}) returned a {type(model).__name__}, not an nn.Module")
    return model


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _plan(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt != "json" and fmt not in tabulate_formats:
        close = difflib.get_close_matches(fmt, tabulate_formats + ["json"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"--format {fmt!r} is not json or a tabulate format{hint}")
    if args.dtype not in _DTYPES:
        raise UsageError(f"--dtype {args.dtype!r} is not one of {', '.join(_DTYPES)}")
    if args.focus and not args.draw:
        raise UsageError(f"--focus {args.focus[0]!r} only narrows the picture, and no picture "
                         "was asked for: add --draw OUT.svg, or drop --focus")
    if args.draw:
        check_folder(args.draw)  # before the model is built: a typo costs nothing
    if args.save_plan:
        check_folder(args.save_plan, "write the plan to")
    rule = get_rule(args.rule)
    kwargs = parse_kwargs(args.kw)
    shapes = [parse_shape(s) for s in args.input_shape]
    try:
        torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device!r}: {_one_line(exc)}") from exc
    _cwd_on_path()
    init = parse_init(args.init)
    forward = _forward_kwargs(args)
    # the user's code prints to stderr: stdout holds the report alone (one JSON document)
    with contextlib.redirect_stdout(sys.stderr):
        report = _dry_run(args, rule, shapes, kwargs, init=init, forward=forward)
    print(report.to_json() if fmt == "json" else report.table(fmt))
    if args.save_plan:
        with open(args.save_plan, "w") as f:
            f.write(report.plan.to_json())
        print(f"zeta-fx: wrote the plan to {args.save_plan}", file=sys.stderr)
    if args.draw:
        result = report.draw(args.draw, focus=args.focus or None, rankdir=args.rankdir)
        print(f"zeta-fx: {result}", file=sys.stderr)
    return 0


def _forward_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The forward's keyword arguments: ``--forward-kw`` literals and ``--input-kw`` tensors
    (one name given twice is an error: which one was meant?)."""
    literals = parse_kwargs(args.forward_kw, "--forward-kw")
    tensors = {}
    for text in args.input_kw:
        name, shape, dtype = parse_input_kw(text, args.dtype)
        if name in literals or name in tensors:
            raise UsageError(f"--input-kw {text!r}: {name!r} is already given; pass each "
                             "forward argument once")
        tensors[name] = (shape, dtype)
    return {**literals, **{name: _example_input(shape, dtype, args.device)
                           for name, (shape, dtype) in tensors.items()}}


def _dry_run(args: argparse.Namespace, rule: Any, shapes: list[tuple[int, ...]],
             kwargs: dict[str, Any], *, init: Any = "zero",
             forward: dict[str, Any] | None = None, gate: bool = False) -> Any:
    """Import the factory, build the model, and run the pass as a dry run (or, for
    ``gate``, build the gated graph, which leaves the model as it was)."""
    leaves = [parse_leaf(text) for text in args.leaf]
    model = _build_model(args.factory, kwargs, args.device)
    _check_names(leaves, getattr(args, "focus", []), model)
    inputs = tuple(_example_input(s, _DTYPES[args.dtype], args.device) for s in shapes)
    options = dict(example_inputs=inputs or None, example_kwargs=forward or None,
                   leaf_modules=leaves, capture=args.capture)
    try:
        if gate:
            # on a copy: the preview changes not even the instance the factory built
            return gate_residuals(copy.deepcopy(model), rule, per_channel=args.per_channel,
                                  graph=args.graph, **options)
        return init_pass(model, rule, init=init, dry_run=True, seed=args.seed, **options)
    except SystemExit as exc:
        raise UsageError(f"the forward of the model that {args.factory} built called "
                         f"sys.exit({exc.code!r}) while it was captured") from None
    except CaptureError as exc:
        # The library's advice names Python arguments; say what they are called here.
        hint = ("check that --input-shape, --input-kw, --forward-kw and --dtype describe "
                "arguments the forward accepts" if inputs or forward else
                "--input-shape with the shape of each input, e.g. --input-shape 1,3,224,224, "
                "captures it with torch.export")
        raise UsageError(f"{_one_line(exc)} (on the command line: {hint}; --leaf FQN or "
                         "--leaf package.module:Class keeps a submodule opaque)") from exc


def _gate(args: argparse.Namespace) -> int:
    """Where ``gate_residuals`` would put its gates: built on a graph of its own, so the
    model is never changed and nothing is written."""
    fmt = args.format
    if fmt != "json" and fmt not in tabulate_formats:
        raise UsageError(f"--format {fmt!r} is not json or a tabulate format")
    if args.dtype not in _DTYPES:
        raise UsageError(f"--dtype {args.dtype!r} is not one of {', '.join(_DTYPES)}")
    rule = get_rule(args.rule)
    kwargs = parse_kwargs(args.kw)
    shapes = [parse_shape(s) for s in args.input_shape]
    forward = _forward_kwargs(args)
    _cwd_on_path()
    with contextlib.redirect_stdout(sys.stderr):
        gated = _dry_run(args, rule, shapes, kwargs, forward=forward, gate=True)
    report = gated if isinstance(gated, GatesReport) else GatesReport.of(gated)
    print(json.dumps(report.to_dict(), indent=2) if fmt == "json" else report.table(fmt))
    print("zeta-fx: a preview: the model was not changed and nothing was written; "
          "zeta_fx.gate_residuals(model, ...) inserts these gates", file=sys.stderr)
    return 0


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that build the user's model and capture it (plan and gate)."""
    parser.add_argument("factory",
                        help="package.module:factory, e.g. torchvision.models:resnet50")
    parser.add_argument("--rule", default="residual_branch_last",
                        help=f"a rule name ({', '.join(list_rules())}; aliases "
                             f"{', '.join(ALIASES)})")
    parser.add_argument("--kw", action="append", default=[], metavar="NAME=VALUE",
                        help="keyword argument for the factory, a Python literal (repeatable)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="1,3,224,224",
                        help="shape of one example input, for models captured with inputs "
                             "(repeatable, in argument order)")
    parser.add_argument("--input-kw", action="append", default=[],
                        metavar="NAME=SHAPE[:DTYPE]",
                        help="a tensor passed to forward by keyword, e.g. "
                             "attention_mask=1,16:int64 (dtype defaults to --dtype; repeatable)")
    parser.add_argument("--forward-kw", action="append", default=[], metavar="NAME=VALUE",
                        help="a Python literal passed to forward by keyword, e.g. "
                             "use_cache=False (repeatable)")
    parser.add_argument("--leaf", action="append", default=[], metavar="FQN|pkg.mod:Class",
                        help="keep a submodule opaque to tracing: its FQN (blocks.0.gate, or "
                             "blocks.* for all under blocks) or its class (repeatable)")
    parser.add_argument("--capture", default="auto", choices=CAPTURE_METHODS,
                        help="auto: symbolic tracing, then torch.export with the example "
                             "inputs if that fails; or force one of them")
    parser.add_argument("--dtype", default="float32",
                        help="dtype of the example inputs (float32, int64 for token ids, ...)")
    parser.add_argument("--device", default="cpu",
                        help="device to build the model on; 'meta' allocates no memory")
    parser.add_argument("--format", default="simple", help="json, or any tabulate table format")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error too (the exit code stays 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zeta-fx",
                                     description="Zero-initialise layers by graph position.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the pass on built-in models and print the reports")
    demo.add_argument("models", nargs="*", help=f"models to run (default: all of "
                                                f"{', '.join(DEMO_MODELS)})")
    demo.add_argument("--rule", default="residual_branch_last")
    demo.add_argument("--format", default="simple", help="any tabulate table format")
    demo.set_defaults(func=_demo)
    rules = sub.add_parser("rules", help="list the rules with one-line descriptions")
    rules.set_defaults(func=_rules)
    plan = sub.add_parser(
        "plan", help="plan the zero-init of your own model (a dry run: weights are never written)",
        description="Build a model with package.module:factory, run the pass as a dry run "
                    "and print the report. Nothing is written to the model's weights; the "
                    "plan and the picture are saved only when asked.")
    _add_model_options(plan)
    plan.add_argument("--init", default="zero", metavar="SPEC",
                      help="what to write at the positions: zero, scaled_normal(std=0.02) or "
                           "fixup() (a dry run: nothing is written)")
    plan.add_argument("--seed", type=int, default=None,
                      help="seed of a random --init's draws, recorded in the plan")
    plan.add_argument("--save-plan", metavar="PLAN.json", help="write the plan as JSON")
    plan.add_argument("--draw", metavar="OUT.svg",
                      help="draw the graph (svg, png, pdf with Graphviz; .dot otherwise)")
    plan.add_argument("--focus", action="append", default=[], metavar="PREFIX",
                      help="draw only the modules under this FQN prefix (repeatable)")
    plan.add_argument("--rankdir", default="TB", choices=("TB", "LR"),
                      help="picture direction: top to bottom or left to right")
    plan.add_argument("--dry-run", action="store_true", default=True,
                      help="accepted and ignored: plan is always a dry run, it never writes "
                           "weights")
    plan.set_defaults(func=_plan)
    gate = sub.add_parser(
        "gate", help="show where gate_residuals would put its gates (writes nothing)",
        description="Build a model with package.module:factory and print where "
                    "gate_residuals would insert a gate (ReZero/SkipInit), and what it "
                    "would leave alone. The model is not changed and nothing is written.")
    _add_model_options(gate)
    gate.add_argument("--per-channel", action="store_true",
                      help="one gate per channel of the merge instead of a scalar")
    gate.add_argument("--graph", action="store_true",
                      help="preview the opt-in graph rewrite (gate_residuals(..., graph=True)), "
                           "which gates every accepted join at its merge")
    gate.set_defaults(func=_gate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a bad argument or model)."""
    args = build_parser().parse_args(argv)
    try:
        try:
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe is found here, not at interpreter exit
            return code
        except BrokenPipeError:
            raise
        except Exception as exc:
            if getattr(args, "debug", False):
                traceback.print_exc()
                return 2
            known = isinstance(exc, (UsageError, ZetaFxError, OSError))
            what = _one_line(exc) if known else f"{type(exc).__name__}: {_one_line(exc)}"
            print(f"zeta-fx {args.command}: error: {what}"
                  + ("" if known else " (run with --debug for the traceback)"), file=sys.stderr)
            return 2
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader went away (``| head``): stop quietly, as a Unix tool killed by SIGPIPE.

    What is still buffered for stdout can never be written: point stdout at ``/dev/null``
    so that Python's flush at exit does not report the broken pipe either.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue  # not a file (captured in a test, replaced by the caller)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return 128 + getattr(signal, "SIGPIPE", 13)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
