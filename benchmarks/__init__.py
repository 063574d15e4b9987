"""The benchmark suite (``benchmarks/run.py``); not part of the installed package.

Modules: :mod:`benchmarks.common` (clocks, summaries, machine description),
:mod:`benchmarks.saliency` (the limit; our engine vs Captum), :mod:`benchmarks.training`
(``train_classifier``), :mod:`benchmarks.gpu_training` (training-step throughput against the
large-batch bound), :mod:`benchmarks.zarr_io` (map writer and reads), :mod:`benchmarks.rss`
(peak RSS of a saliency job run by :mod:`benchmarks.rss_job`), :mod:`benchmarks.render`
(BENCHMARKS.md) and :mod:`benchmarks.run` (the command line).
"""
