"""URLs of the test project."""

from django.urls import include, path

from django_project import views

urlpatterns = [
    path("classify", views.classify),
    path("aclassify", views.aclassify),
    path("stream", views.stream),
    path("astream", views.astream),
    path("synth/", include("synth_middleware_django.urls")),
]
