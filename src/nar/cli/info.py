"""``nar info`` — versions and devices, for bug reports."""

from __future__ import annotations

import argparse
import platform


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print versions and devices")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import nar

    print(f"nar {nar.__version__}  python {platform.python_version()}  torch {torch.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    return 0
