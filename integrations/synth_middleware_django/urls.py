"""URLs of the feedback endpoint; mount them under ``synth/``::

    urlpatterns = [
        ...,
        path("synth/", include("synth_middleware_django.urls")),   # POST /synth/feedback
    ]
"""

from __future__ import annotations

from django.urls import path

from synth_middleware_django.views import feedback

app_name = "synth_middleware"

urlpatterns = [
    path("feedback", feedback, name="feedback"),
]
