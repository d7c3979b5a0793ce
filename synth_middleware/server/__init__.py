"""``synth-middleware serve``: the embedded engine over HTTP.

::

    from synth_middleware.server import create_app

    app = create_app(db_path=".synth/synth.db", api_key="...", upstream_url="https://api.openai.com/v1")

or from a shell: ``synth-middleware serve --port 8000``. Needs the ``server``
extra (FastAPI, uvicorn).
"""

from synth_middleware.server.app import create_app
from synth_middleware.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
