"""results/REPORT.md from the result records: statistics and verdicts in one module (``stats``, the
one statistics rule every claim follows), one module per section (``paper_tables``, ``defenses``,
``ownership``, ``study``), and ``document``, which assembles them. Reports read records only: no
model, data or attack code."""
