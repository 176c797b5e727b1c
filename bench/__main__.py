"""`python -m bench [options]`: the engine benchmark without the service's CLI and its needs.

Only torch, transformers and the worker's engine are imported, so the same command runs on a
bare GPU machine (scripts/gpu-bench); the options are those of `internvl-jobs bench engine`.
"""

from __future__ import annotations

import argparse
import logging

from bench.commands import cmd_bench_engine, engine_arguments


def main(argv: list[str] | None = None) -> int:
    """Parse the engine benchmark's options, run it and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    engine_arguments(parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return cmd_bench_engine(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
