"""Tables a person reads: :func:`markdown_table` (a pandas DataFrame as GitHub markdown, with
no ``tabulate`` dependency), used by the ``probdyn`` command and the comparison harness."""

from __future__ import annotations

__all__ = ["markdown_table"]


def _cell(v, floatfmt: str) -> str:
    if isinstance(v, tuple):  # a MultiIndex label
        return ", ".join(_cell(x, floatfmt) for x in v)
    if isinstance(v, float) or type(v).__name__.startswith("float"):
        return format(float(v), floatfmt)
    return str(v)


def markdown_table(df, floatfmt: str = ".4g", index: bool = True) -> str:
    """``df`` as a GitHub markdown table: the index (names joined by ", " for a MultiIndex) as
    the first column unless ``index=False``; floats formatted with ``floatfmt`` (``inf`` and
    ``nan`` as such); column labels that are floats formatted with ``"g"``."""
    head = [_cell(c, "g") for c in df.columns]
    rows = [[_cell(v, floatfmt) for v in r] for r in df.itertuples(index=False)]
    if index:
        names = [n for n in df.index.names if n is not None]
        head = [", ".join(names)] + head
        rows = [[_cell(i, floatfmt)] + r for i, r in zip(df.index, rows)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
