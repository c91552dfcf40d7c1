"""The ``zeta-fx`` command line: ``demo`` and ``rules``.

    $ zeta-fx demo            # reports for the built-in models, nothing to pass
    $ zeta-fx rules           # the registered rules with one-line descriptions
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import torch
from torch import nn

from zeta_fx.api import zero_init_pass
from zeta_fx.models import GPT, SEResNet
from zeta_fx.rules import list_rules

__all__ = ["main", "DEMO_MODELS"]

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
        report = zero_init_pass(model, rule=args.rule, tablefmt=args.format)
        print(f"== {name}: {type(model).__name__}, rule {args.rule}")
        print(report)
        print()
    return 0


def _rules(args: argparse.Namespace) -> int:
    for name, description in list_rules().items():
        print(f"{name:24s} {description}")
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
