"""`python -m worker --model ALIAS --device gpu0`: one worker process (started by the launcher)."""

from __future__ import annotations

import argparse

from core.config import get_settings
from worker.process import serve


def main() -> None:
    """Run one worker process for the given model and device label."""
    parser = argparse.ArgumentParser(prog="python -m worker")
    parser.add_argument("--model", required=True, help="model alias from the registry")
    parser.add_argument("--device", required=True, help="device label, e.g. gpu0 or cpu0")
    parser.add_argument("--loglevel", default=None)
    args = parser.parse_args()
    settings = get_settings()
    serve(
        settings=settings,
        model_alias=args.model,
        device=args.device,
        loglevel=args.loglevel or settings.log_level,
    )


if __name__ == "__main__":
    main()
