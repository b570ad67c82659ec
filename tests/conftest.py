"""Shared test settings: hypothesis profiles (CI runs the default, NORI_HYPOTHESIS=thorough for more)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("NORI_HYPOTHESIS", "default"))
