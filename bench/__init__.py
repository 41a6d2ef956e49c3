"""The benchmark harness behind `make bench` (`python -m bench.run`): one module per figure.

Standalone micro-benchmarks live next to it (`codec_bench.py`, `embedding_bench.py`) and are
reused, not duplicated, by the figures.
"""
