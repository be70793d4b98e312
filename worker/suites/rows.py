"""Transitional re-export of worker.suites.common.rows (removed once the suites import it from there)."""

from worker.suites.common.rows import *  # noqa: F403
from worker.suites.common.rows import _file_view, _pread_into, _target  # noqa: F401
