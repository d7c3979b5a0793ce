"""Settings of the test project (no database is used)."""

SECRET_KEY = "django-insecure-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "django_project.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "synth_middleware_django.SynthMiddleware",
]
USE_TZ = True
SYNTH_MIDDLEWARE = {
    "SECRET": "django-test-secret",
    "KEY_HEADER": "x-user-id",
    "TOKEN_MAX_AGE": 600,
}
