"""hdb_mlops."""
