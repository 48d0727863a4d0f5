"""Build-plane stages: one module per `dvc.yaml` stage, each run as `python -m tasks.<stage>`."""
