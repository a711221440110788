from .results import read_eval_results, read_metrics_log, write_eval_results
