"""The KFP DAG, its local and cluster runners, data-version operations and the CLI."""
