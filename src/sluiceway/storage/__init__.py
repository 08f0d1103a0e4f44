"""Durable output: Parquet row groups, the manifest, the capacity plan file, dataset loading."""
