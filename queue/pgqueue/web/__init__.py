"""The operator's dashboard: queues, jobs, nodes, actions and ``/metrics``, as an ASGI app.

Needs the ``web`` extra (``pip install 'chimeway[web]'``). Serve it with ``python -m pgqueue web``
or mount :func:`create_app` in your own Starlette/FastAPI application::

    from pgqueue.web import create_app

    app.mount("/queue", create_app(pool=pool, authenticate=current_staff_user))
"""

from __future__ import annotations

from .app import create_app
from .auth import Authenticator
from .context import Dashboard, Extension, default_redact

__all__ = ["Authenticator", "Dashboard", "Extension", "create_app", "default_redact"]
