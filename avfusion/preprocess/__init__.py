"""Preprocess: clip lists and folders into WebDataset shards, one module per concern.

* ``plan``: which clips go into which shard, the plan's identity, retry rounds;
* ``shard``: one shard's clips through fetch → decode → encode (``process_shard``);
* ``run``: the orchestration (``run_preprocess``): input, resume, shards through an
  ``avfusion.executor.Executor``, task-failure records;
* ``report``: the finish: manifest, failures table, summary.

No module here imports Ray; where shards run is the executor's business.
"""
