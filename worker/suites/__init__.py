"""Evaluation suites: one package per suite (one protocol per module), shared machinery in `common/`.

Pure functions: arrays or an encode function in, a SuiteResult out; no I/O, no queue, no registry lookups here
(the registry is repscope.suites; worker.suite_runners resolves it to each package's suite.py).
"""
