"""Helpers shared by the tests: fixtures, programs, servers, search objectives."""
