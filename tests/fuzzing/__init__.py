"""A deterministic fuzz harness for the fp-onnx command line.

The README promises that every bad input ends in ONE `error: ...` line with exit
code 2-6, that nothing is written outside `--out`, that nothing is ever unpickled,
and that no half-written output is left. This package checks those promises on
generated hostile inputs, the way a new user (or an attacker) would meet them:

* `seeds`: a few valid vendor models, each in its own folder with matching data
  (the shipped speech model, a torch dynamo export with external data, a
  tf2onnx-style NHWC graph with layout Transposes, a Caffe-era fixed-batch-1 graph
  with initializers listed as inputs);
* `cases`: the registry of mutators. Each one turns a seed into a case (files in
  the case's own folder plus a command line), deterministically from
  `numpy.random.default_rng([campaign seed, case index])`: corrupted and rewired
  models, external-data path attacks, pickles whose payload would leave a
  sentinel file, lying array headers, odd HDF5 files and image folders, bad flags;
* `harness`: runs one case as a subprocess (`fp-onnx ...`) with a timeout and an
  address-space cap, in its own folder, and classifies what happened (`Outcome`);
* `campaign`: runs many cases and counts outcomes (`bench/fuzz.py` for the large run,
  `tests/test_fuzz.py` for the small seeded sample CI runs).
"""
from fuzzing.campaign import CampaignResult, run_campaign
from fuzzing.harness import FAILURES, Outcome

__all__ = ["CampaignResult", "FAILURES", "Outcome", "run_campaign"]
