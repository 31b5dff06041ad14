"""The test project's URLs."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("note/<str:text>", views.note),
    path("locked/<str:text>", views.locked_note),
    path("record/<str:text>", views.record),
    path("fail", views.fail),
    path("boom", views.boom),
    path("stream", views.stream),
    path("file", views.file),
    path("commit/<str:text>", views.commit),
    path("commit-async/<str:text>", views.commit_async),
    path("commit-checked/<str:kind>", views.commit_checked),
    path("nested", views.nested),
    path("other-db", views.other_db),
    path("view-row", views.view_row),
    path("async-count/<str:text>", views.async_count),
    path("task/<str:name>", views.enqueue),
]
