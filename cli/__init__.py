"""The `internvl-jobs` command: argument parsing and the wiring of each process."""
