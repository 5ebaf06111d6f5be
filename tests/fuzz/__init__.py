"""Fuzz harness: every decoder of bytes that a peer or an HTTP client controls.

:mod:`tests.fuzz.targets` holds one target per decoder: a function of one
``bytes`` input that drives the real decoder (through its stream reader where
it has one) and the list of error types it documents.  An input *crashes* a
target when it raises anything else, logs a failure (a swallowed exception),
leaves a read hanging, or breaks an invariant the target checks.

* ``tests/fuzz/test_fuzz.py``: the short run (trial; hypothesis, a few
  hundred examples per strategy, ``AICN_FUZZ_EXAMPLES`` for more);
* ``tests/fuzz/test_bounds.py``: length prefixes that claim 4 GiB are refused
  before anything of that size is allocated or read;
* ``bench/fuzz.py``: the long run (10**5 cases per target; atheris when it is
  installed, else the mutator of :mod:`tests.fuzz.mutate`).
"""
