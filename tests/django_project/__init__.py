"""A small real Django project for the integration tests.

Settings are applied with ``settings.configure()`` by :func:`setup`, called
from the Django test modules only, so other test modules never see Django
configured unless one of these ran first in the same process.
"""

from __future__ import annotations


def setup() -> None:
    """Configure Django with this project's settings (once per process)."""
    import django
    from django.conf import settings

    if not settings.configured:
        from django_project import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
