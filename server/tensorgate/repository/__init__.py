"""The model repository: Triton's layout on disk, configs, versions and their states."""
