"""Settings of the test Django project: PostgreSQL from ``PGQUEUE_TEST_DSN``, everything in the
schema ``PGQUEUE_TEST_SCHEMA`` (Django's own tables too, through the search_path), or SQLite when
``PGQUEUE_TEST_DJANGO_DB=sqlite`` (which pgqueue must refuse at startup)."""

import os

import django
import psycopg

_info = psycopg.conninfo.conninfo_to_dict(os.environ["PGQUEUE_TEST_DSN"])
SCHEMA = os.environ["PGQUEUE_TEST_SCHEMA"]
HAS_TASKS = django.VERSION >= (6, 0)

SECRET_KEY = "tests-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["pgqueue.contrib.django", "tests.django_project.shop"]

if os.environ.get("PGQUEUE_TEST_DJANGO_DB") == "sqlite":
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _info.get("dbname"),
            "USER": _info.get("user", ""),
            "PASSWORD": _info.get("password", ""),
            "HOST": _info.get("host", ""),
            "PORT": _info.get("port", ""),
            "OPTIONS": {"options": f"-c search_path={SCHEMA}"},
        }
    }

PGQUEUE = {
    "SCHEMA": SCHEMA,
    "QUEUES": {"default": 2, "emails": 2},
    "WORKERS": ["tests.django_project.shop.workers"],
    "TASK_MODULES": ["tests.django_project.shop.tasks"] if HAS_TASKS else [],
}

if HAS_TASKS:
    TASKS = {
        "default": {
            "BACKEND": "pgqueue.contrib.django.tasks.PgQueueBackend",
            "QUEUES": ["default", "emails"],
        }
    }
