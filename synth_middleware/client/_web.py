"""The former private name of :mod:`synth_middleware.client.web` (kept for code that
imports it).

The very same module object, not a copy: its state (the per-process token secret,
the replay memory) is shared, and patching a name here patches it there.
"""

import sys

from synth_middleware.client import web

sys.modules[__name__] = web
