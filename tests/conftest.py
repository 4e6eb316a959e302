# Fixtures of the merge/serve/evaluate tests (tests/eval_fixtures.py), registered once per session.
from eval_fixtures import *  # noqa: F401,F403
