"""Helpers shared by the scaling and fault tests (imported as ``helpers.*``: pytest puts tests/ on sys.path)."""
