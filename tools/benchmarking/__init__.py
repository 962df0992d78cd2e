"""The code behind tools/benchmark_involution.py (``operator``) and tools/benchmark_models.py
(``models``), with their timing and memory helpers (``timing``). Kept beside the tools, out of
the installed package: nothing in ``involution_d2`` imports it. The tools find it as their
own folder's package; the tests put tools/ on ``sys.path``."""
