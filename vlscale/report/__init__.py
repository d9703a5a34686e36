"""Reports: tidy tables (``tables``) -> plotly figures (``figures``) -> one HTML file (``html``).

``pages`` builds the two reports the CLI writes (``vlscale plan --report`` and ``vlscale compare
--report``). Importing this package imports nothing heavy; plotly is loaded by ``figures`` /
``html`` only, so the planner's CLI pays for it only when ``--report`` is given.
"""
