"""The orchestration layer: Dagster assets, IO manager, resources and jobs around the core."""
