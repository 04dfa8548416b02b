"""Robustness evaluation: accuracy and attention of a model under each condition.

* ``conditions``: ``Condition`` (corruptions and severities; ``name``, ``corruption``,
  ``modality``, ``severity``), ``NORMAL``, ``conditions`` (the suites),
  ``parse_conditions`` (the ``--conditions`` flag), ``corrupt`` (one clip, seeded);
* ``run``: ``evaluate_conditions`` (models × conditions on any device),
  ``shard_batches`` and ``folder_batches`` (the inputs), ``EvalConfig`` and ``run``
  (``avfusion evaluate``);
* ``report``: ``evidence_left`` and ``verdict`` (which corruptions destroy a modality's
  evidence), ``markdown_table``, ``write_report`` (robustness.json, robustness.md, plots);
* ``signals``: per-clip signals that a stream is lost (``SIGNALS``, ``stream_signals``,
  ``clip_signals``), collected during ``evaluate_conditions`` (``SignalTally``, its
  ``observe``) or by ``signal_aurocs``: how well each tells a corrupted stream from the
  same clips clean (AUROC, and ``false_alarms``: the clean clips flagged to catch 3/4 of
  the corrupted).
"""
