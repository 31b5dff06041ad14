"""A Django project for wsgi_after's Django tests (PostgreSQL on 127.0.0.1:5432)."""
