"""Terminal output of an :class:`~qc.results.Assessment`: a one-screen summary and the `--explain` tree."""

from __future__ import annotations

from qc.results import Assessment

_DIRECTION = {"higher_is_better": "higher is better", "lower_is_better": "lower is better",
              "closer_to_target": "closer to target is better"}
_STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "info": "cyan", "not_measured": "dim"}


def _fmt(v, nd=3) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{nd}g}" if abs(v) < 1000 else f"{v:.0f}"


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False, width=160)


def print_summary(result: Assessment, console=None) -> None:
    console = console or _console()
    console.print(f"[bold]{result.source}[/]  region: {result.region}  overall: [bold]{_fmt(result.overall)}[/] / 10")
    for name, cat in result.categories.items():
        s = "not assessed" if cat.score is None else f"{cat.score:.2f}"
        console.print(f"  {name:<22} {s}")
    for w in result.warnings:
        console.print(f"  [yellow]warning:[/] {w}")


def explain_tree(result: Assessment):
    """rich Tree: overall <- categories <- items/IQMs, each with value, unit, direction, coefficient and contribution."""
    from rich.tree import Tree

    model = result.model or {}
    head = (f"[bold]Overall {_fmt(result.overall)}[/] / 10  = intercept {result.overall_intercept:g} + "
            f"sum(coefficient x category score)   [dim]model: {model.get('kind', '?')} ({model.get('config', '')})[/]")
    tree = Tree(head)
    coefs = {t.category: t for t in result.overall_terms}
    for name, cat in result.categories.items():
        ot = coefs.get(name)
        if cat.score is None:
            node = tree.add(f"[dim]{name}: not assessed[/]")
        else:
            node = tree.add(f"[bold]{name}[/] {cat.score:.2f}  x {ot.coefficient:.3f} = [bold]{ot.contribution:+.3f}[/]"
                            f"   [dim](intercept {cat.intercept:g})[/]")
        for t in cat.terms:
            iqm = result.iqms.get(t.iqm)
            direction = _DIRECTION.get(iqm.direction, "") if iqm else ""
            style = _STATUS_STYLE.get(t.status, "")
            ci = f" [dim][95% CI {t.ci_low:.3f}, {t.ci_high:.3f}][/]" if t.ci_low is not None else ""
            feat = "item score" if t.feature_kind.startswith("rubric") else "z"
            node.add(f"[{style}]{t.status:<5}[/] {t.item}: {t.iqm} = {_fmt(t.value)} {t.unit} [dim]({direction})[/]"
                     f" -> {feat} {t.feature:.2f} x {t.coefficient:.3f}{ci} = {t.contribution:+.3f}")
        for na in cat.not_assessed:
            node.add(f"[dim]not assessed: {na}[/]")
    other = [i for n, i in result.iqms.items()
             if not any(t.iqm == n for c in result.categories.values() for t in c.terms)]
    if other:
        extra = tree.add("[dim]measured, not scored[/]")
        for i in other:
            extra.add(f"[dim]{i.name} = {_fmt(i.value)} {i.unit} ({_DIRECTION.get(i.direction, '')})[/]")
    return tree


def print_explain(result: Assessment, console=None) -> None:
    console = console or _console()
    console.print(f"[bold]{result.source}[/]   region: {result.region} ({result.region_reason})")
    console.print(explain_tree(result))
    worst = result.worst_term()
    if worst is not None:
        cat, t, gain = worst
        console.print(f"[bold red]Costs the most:[/] {cat} / {t.item} ({t.iqm} = {_fmt(t.value)} {t.unit}): "
                      f"fixing it would add {gain:.2f} points to the overall score")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"[dim]timings (s): {result.timings_s}   versions: ctqc {result.versions.get('ctqc')}[/]")
