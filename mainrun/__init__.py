"""mainrun: hyperparameter search for the Mainrun training run.

One run: config (the run config and its YAML), data (titles, tokenizer, cache), model (the GPT),
train (the loop and evaluate()). The search: space (YAML search spaces), storage (study
databases), search/ (study, objective, workers). Results: export, report and compare (HTML pages
from templates/, with pages and formats). errors (the exception tree), cli (entry points), bench
(the benchmark).
"""
__version__ = "0.1.0"
