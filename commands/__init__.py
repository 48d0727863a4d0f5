"""The `driftloop` command line's composition root: the one place that assembles every plane's commands.

It sits above `driftloop/` (the ground floor), `serving/` and `flows/`, so none of them imports
another plane to build the CLI.
"""
