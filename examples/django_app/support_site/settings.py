"""Settings of the example (no database is used)."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "support_site.urls"
WSGI_APPLICATION = "support_site.wsgi.application"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "synth_middleware_django.SynthMiddleware",  # the one line
]

SYNTH_MIDDLEWARE = {
    "KEY_HEADER": "x-user-id",  # the same user gets the same prompt candidate
    # "SECRET": ...,            # default: SYNTH_TOKEN_SECRET (set it in production)
}
