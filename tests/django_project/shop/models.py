"""What the test views and their callbacks write."""

from __future__ import annotations

from django.db import models


class Note(models.Model):
    """A row written by a view or by a callback."""

    text: models.CharField[str, str] = models.CharField(max_length=200)
    thread: models.CharField[str, str] = models.CharField(max_length=100, default="")

    def __str__(self) -> str:
        return str(self.text)
