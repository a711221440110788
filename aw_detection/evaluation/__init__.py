from .results import read_eval_results, write_eval_results
