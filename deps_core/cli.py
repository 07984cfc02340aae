"""The ``deps`` command.

``deps train`` will run DεpS on the embedded default (a synthetic dataset, a small MBV3-32 supernet) once the trainer
lands; until then it builds the supernet, samples subnets with a seeded generator and prints their size, MACs and
the time of one forward, which is the part of the pipeline that exists. ``deps spaces`` lists the registered spaces.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _cmd_spaces(args: argparse.Namespace) -> int:
    from deps_core.arch import max_arch, min_arch
    from deps_core.macs import macs
    from deps_core.spaces import list_spaces, space_spec

    rows = []
    for name in list_spaces():
        spec = space_spec(name)
        rows.append(
            [
                name,
                spec.n_blocks,
                spec.default_resolution,
                f"{macs(max_arch(spec)) / 1e6:.2f}",
                f"{macs(min_arch(spec)) / 1e6:.2f}",
            ]
        )
    print(_table(rows, ["space", "blocks", "res", "max MMACs", "min MMACs"]))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from deps_core.arch import uniform_arch
    from deps_core.spaces import create_supernet

    generator = torch.Generator().manual_seed(args.seed)
    net = create_supernet(args.space, num_classes=args.num_classes, width_mult=args.width_mult, generator=generator)
    net.eval()
    n_params = sum(p.numel() for p in net.parameters()) / 1e6
    print(
        f"deps train: the trainer is not wired in yet; showing the supernet it will train ({net.spec.name}, "
        f"width {args.width_mult}, {args.num_classes} classes, {n_params:.2f} M parameters)"
    )
    archs = [net.max_arch(), net.min_arch()] + [uniform_arch(net.spec, generator) for _ in range(args.samples)]
    res = net.spec.default_resolution
    x = torch.randn(args.batch_size, 3, res, res, generator=generator)
    rows = []
    with torch.no_grad():
        for i, arch in enumerate(archs):
            active = sum(v.numel() for v in net.active_params(arch).values())
            start = time.perf_counter()
            logits = net(x, arch)
            ms = (time.perf_counter() - start) * 1e3
            if not torch.isfinite(logits).all():
                raise RuntimeError(f"non-finite logits from {arch}")
            label = "max" if i == 0 else "min" if i == 1 else f"uniform {i - 1}"
            rows.append(
                [label, "".join(map(str, arch.d)), f"{active / 1e6:.2f}", f"{net.macs(arch) / 1e6:.2f}", f"{ms:.1f}"]
            )
    print(_table(rows, ["subnet", "depths", "M params", "MMACs", f"fwd ms (batch {args.batch_size})"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deps", description="Once-for-all supernet training with DεpS (Delayed ε-Shrinking).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a supernet (default: the embedded synthetic-data demo)")
    p.add_argument("--space", default="ofa_mbv3_32", help="registered space (see `deps spaces`)")
    p.add_argument("--width-mult", type=float, default=0.5, help="width multiplier of the space")
    p.add_argument("--num-classes", type=_positive_int, default=10)
    p.add_argument("--samples", type=_positive_int, default=6, help="uniform subnets to show besides max and min")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("spaces", help="list the registered spaces with their largest and smallest MACs")
    p.set_defaults(fn=_cmd_spaces)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as err:
        print(f"deps {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
