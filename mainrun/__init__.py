"""mainrun: hyperparameter search for the Mainrun training run.

Modules: config (the run config and its YAML), data (titles, tokenizer, cache), model (the
GPT), train (the loop and evaluate()), space (YAML search spaces), search (study, objective,
workers), cli (entry points), bench (the benchmark).
"""
__version__ = "0.1.0"
