"""mainrun-confirm: a search's finalists trained again on extra train seeds, the same seeds for
every config, so that the best can be told from luck (issue 19).

    finalists.py   which configs (the best K distinct ones and the references) and which seeds: the Plan
    companion.py   the companion study NAME-confirm: one enqueued trial per (config, seed) run
    run.py         ConfirmOptions, the objective that trains a run, run_confirm: plan, enqueue, workers;
                   confirm_after_search for mainrun-search --confirm
    stats.py       scipy.stats: a config's mean, sd and CI; two configs paired seed by seed; verdicts
    results.py     the two studies read back as a ranked confirmation with its comparisons
    console.py     the table mainrun-confirm prints
    figures.py     the report's Confirmed section (plotly and its PNG)

The runs use the search's machinery (`mainrun.search.workers`): worker processes, heartbeats
and the retry of a lost run, signals, memory admission, artifacts. The search never imports this
package: its closing lines name the confirm command through `mainrun.commands`, and the CLI
hands a finished search on to `confirm_after_search`.
"""
