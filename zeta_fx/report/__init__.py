"""Report: made once from the plan and the outcome; rows, table, JSON, picture.

Takes the plan, the apply :class:`~zeta_fx.apply.Outcome` and (when the pass traced) the
view; hands the user :class:`ZeroInitReport`: ``.modules``, ``.params``, ``.touched``,
``.skipped``, ``.table(tablefmt)``, ``.to_json()``, and the picture
(:mod:`~zeta_fx.report.picture`). Library code never prints.
"""

from zeta_fx.report.report import ZeroInitReport

__all__ = ["ZeroInitReport"]
