"""URLs: the classifier (sync and async views) and the feedback endpoint."""

from django.urls import include, path

from support_site import views

urlpatterns = [
    path("classify", views.classify),
    path("aclassify", views.aclassify),
    path("synth/", include("synth_middleware_django.urls")),  # POST /synth/feedback
]
