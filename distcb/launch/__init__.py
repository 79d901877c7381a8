"""Launchers behind `distcb.run`: one module per backend."""
