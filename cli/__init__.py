"""The `internvl-jobs` command: parses arguments and wires each process (api, worker, sweeper, ...)."""
