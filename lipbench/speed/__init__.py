"""Layer speed as a ratio to a plain convolution, and regression checks against a baseline.

What is timed, per layer and for one fixed shape, two steps:

* ``train``: forward, backward (to the input and to the parameters) and an SGD step on the
  layer's parameters;
* ``eval``: a forward in eval mode under ``torch.no_grad()``, with the layer's caches warm.

Each step is timed against the same step of a reference workload of the same shape, in the same
process: a plain ``nn.Conv2d`` (``nn.Linear`` for kind ``linear``). After a warm-up, blocks of
the layer's step and of the reference's step alternate (A B A B ...); each block repeats its step
for about ``block_ms`` (a GPU is synchronized at both ends of a block). Two neighbouring blocks
give one ratio of per-step times, and a process reports the median of its pairs. Several fresh
processes run one after another; the ratio is the median of their medians, and the per-process
medians are kept for the significance test. A shared machine's load slows both blocks of a pair
alike, so ratios move far less than raw times do.

On CPU the clock is the process's CPU time and torch runs one thread: a busy runner then delays
a step without adding to its measured cost (wall time on a loaded machine moves the ratios by tens
of percent between processes; CPU time, with the allocator steadied, by a few). On CUDA the clock
is wall time, the GPU synchronized at both ends of a block.

A check flags a layer when its ratio grew by more than ``factor`` *and* a one-sided
Mann-Whitney U test on the per-process medians (after > before) gives ``p <= alpha``; a suspect
is measured once more, and its new processes pooled with the first, before it fails.

Data flow: :func:`measure` (``processes``) runs worker processes (``worker.py`` run as a script, so it
also measures another revision's ``lipbench`` put first on ``PYTHONPATH``) and returns :class:`Speeds`
(``samples``); :func:`to_document` / :func:`from_document` (``baseline``) turn them into a baseline
file and back; :func:`judge` (``verdicts``) compares two samples.
"""
from lipbench.speed.baseline import BASELINE_FORMAT, from_document, load_document, save_document, to_document
from lipbench.speed.processes import (DEVICE_CLASSES, baseline_environment, device_class, measure, revision_tree,
                                      run_worker, timing_config)
from lipbench.speed.samples import Sample, Speeds
from lipbench.speed.verdicts import (DEFAULT_ALPHA, DEFAULT_FACTOR, Verdict, compare, confirmed_verdicts, judge,
                                     mann_whitney_greater, smallest_p)
from lipbench.speed.worker import STEPS, Config, Timing, Workload

__all__ = ["BASELINE_FORMAT", "DEFAULT_ALPHA", "DEFAULT_FACTOR", "DEVICE_CLASSES", "STEPS", "Config", "Sample",
           "Speeds", "Timing", "Verdict", "Workload", "baseline_environment", "compare", "confirmed_verdicts",
           "device_class", "from_document", "judge", "load_document", "mann_whitney_greater", "measure",
           "revision_tree", "run_worker", "save_document", "smallest_p", "timing_config", "to_document"]
