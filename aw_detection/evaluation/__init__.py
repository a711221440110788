from .compare import compare_runs, group_by_config, load_run, markdown_table, write_comparison
from .results import read_eval_results, read_metrics_log, write_eval_results
