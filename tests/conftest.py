"""Suite-wide settings.

Hypothesis: CI (``CI=true``, as ``.ci/run`` runs) uses a derandomized profile so a submission's
result does not depend on the draw; locally the default random profile keeps exploring (and its
example database replays any failure it finds).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
