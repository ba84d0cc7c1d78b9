"""Tables, retention figures and plots from a run's ledger (no recomputation), one file per job:
rows.py (rows and their aggregation over seeds), verdicts.py, tables.py, plots.py, merge.py (shards) and
render.py, which assembles report.md, summary.json and results.json from them."""

from .merge import merge_run_folders
from .render import provisional_lines, render, render_folder, terminal_summary

__all__ = ["merge_run_folders", "provisional_lines", "render", "render_folder", "terminal_summary"]
