"""Reports: tidy tables -> plotly figures -> one self-contained HTML file (``html``).

- ``pages``: the plan and compare reports (``vlscale plan --report``, ``vlscale compare
  --report``), from ``tables`` and ``step_figures``;
- ``study_page``: the study page (``vlscale report``), from ``study``, ``study_figures``,
  ``record`` (validation results, published runs) and ``assumptions``;
- ``validation``: predicted against measured (``vlscale validate --report``).

Importing this package imports nothing heavy; plotly is loaded by the figure modules and
``html`` only, so the planner's CLI pays for it only when a report is asked for.
"""
