"""What mainrun-confirm prints: the plan of a dry run, and the table and verdicts at the end."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..commands import export_command, report_command
from ..edges import recorded_space_edges
from ..search.console import Echo, print_edges
from .companion import companion_name
from .finalists import Plan
from .stats import CURSE_SDS, LEVEL, Spread

if TYPE_CHECKING:
    import optuna

    from .results import Confirmation, Confirmed


def print_plan(plan: Plan, echo: Echo) -> None:
    """--dry-run: the finalists, the seeds and the runs still missing; nothing was written."""
    name = plan.search.study_name
    echo(f"dry run of the confirmation of study '{name}' (nothing is created or trained)")
    echo(f"{'trial':>5}  {'official':>8}  config")
    for f in plan.finalists:
        echo(f"{f.trial.number:>5}  {f.trial.value:>8.4f}  {f.label}{' (reference)' if f.reference else ''}")
    total = len(plan.finalists) * len(plan.seeds)
    where = f"'{companion_name(name)}'" if plan.companion is not None else f"'{companion_name(name)}' (not made yet)"
    echo(f"train seeds {', '.join(map(str, plan.seeds))}: {total} runs, {total - len(plan.missing)} settled in "
         f"{where}, {len(plan.missing)} to run")


def print_plan_after_search(top: int, references: list[str], seeds: list[int], echo: Echo) -> None:
    refs = f" and the references it enqueues ({', '.join(references)})" if references else ""
    runs = (top + len(references)) * len(seeds)
    echo(f"then --confirm {top}: the best {top} distinct configs{refs}, each on train seeds "
         f"{', '.join(map(str, seeds))}: at most {runs} more full runs")


def spread_text(s: Spread) -> tuple[str, str]:
    """(mean ± sd, CI) cells of a config's row."""
    mean = f"{s.mean:.4f}" + (f" ± {s.sd:.4f}" if s.sd is not None else "")
    return mean, (f"{s.ci[0]:.4f} to {s.ci[1]:.4f}" if s.ci else "–")


def confirmation_lines(c: Confirmation) -> list[str]:
    """The table (one row per config, ranked by mean), what each lacks, the verdicts, the flags."""
    seeds = ", ".join(f"{s} (official)" if i == 0 else str(s) for i, s in enumerate(c.seeds))
    lines = [f"confirmation of study '{c.study}' (runs in '{c.companion}'), train seeds {seeds}:"]
    width = max([len("config")] + [len(x.finalist.label) for x in c.configs])
    lines.append(f"{'rank':>4}  {'config':<{width}}  {'official':>8}  {'mean ± sd':<17}  "
                 f"{f'{LEVEL:.0%} CI of the mean':<18}  seeds")
    notes = []
    for x in c.configs:
        mean, ci = spread_text(x.spread)
        flag = "  winner's curse" if x.winners_curse else ""
        lines.append(f"{x.rank:>4}  {x.finalist.label:<{width}}  {x.official:>8.4f}  {mean:<17}  {ci:<18}  "
                     f"{x.spread.n}{flag}")
        if x.spread.why_no_ci:
            notes.append(f"{x.name}: no CI ({x.spread.why_no_ci})")
        for seed, why in sorted(x.missing.items()):
            notes.append(f"{x.name}: seed {seed} has no value ({why})")
    lines += [f"  {n}" for n in notes]
    if c.against:
        lines += ablation_lines(c)
    elif c.comparisons:
        lines.append("verdicts (paired t-test over the seeds both configs have):")
        lines += [f"  {cmp.verdict} [{cmp.why}]" for cmp in c.comparisons]
    for x in c.configs:
        if x.winners_curse:
            lines.append(winners_curse_text(x))
    return lines


def ablation_lines(c: Confirmation) -> list[str]:
    """--against BASE: each config's change of the loss against the base, seed by seed (paired
    t-test), in the table's order; a change whose CI excludes 0 is called better or worse."""
    width = max([len("config")] + [len(cmp.a.name) for cmp in c.comparisons])
    lines = [f"against {c.against} (config minus {c.against}, paired over the seeds both have; negative is better):",
             f"  {'config':<{width}}  {'change':>8}  {f'{LEVEL:.0%} CI':<18}  {'p':>7}  seeds  verdict"]
    for cmp in c.comparisons:
        change, ci = cmp.change
        r = cmp.result
        if ci is None:
            word = r.why_no_ci
        elif r.decided:
            word = "better" if change < 0 else "worse"
        else:
            word = "not distinguishable"
        ci_text = f"{ci[0]:+.4f} to {ci[1]:+.4f}" if ci else "–"
        p = f"{r.p:.2g}" if r.p is not None else "–"
        lines.append(f"  {cmp.a.name:<{width}}  {change:>+8.4f}  {ci_text:<18}  {p:>7}  {r.n:>5}  {word}")
    return lines


def winners_curse_text(x: Confirmed) -> str:
    return (f"winner's curse: {x.name}'s official value {x.official:.4f} is more than {CURSE_SDS:g} sd better than "
            f"its other seeds ({x.fresh.mean:.4f} ± {x.fresh.sd:.4f}, n={x.fresh.n}): the search picked a lucky "
            "run; expect its mean")


def print_confirmation(c: Confirmation, storage_url: str, echo: Echo, search: optuna.Study | None = None) -> None:
    """The table and verdicts; then where the best by mean sits at the edge of the search's space."""
    echo("")
    for line in confirmation_lines(c):
        echo(line)
    if search is not None and c.best:
        print_edges(recorded_space_edges(search, c.best.finalist.trial), f"the confirmed best ({c.best.name})", echo)
    echo("\nnext:")
    echo(f"  {export_command(storage_url, c.study, confirmed=True)}")
    echo(f"  {report_command(storage_url, c.study)}")
