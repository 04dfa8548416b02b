"""Label: videos into a Parquet dataset with a trained model, one module per concern.

* ``worker``: what runs on one batch (``DecodeRows``: files → decoded clip windows;
  ``Predictor``: decoded windows → predictions; ``LABEL_LIMITS``);
* ``schema``: the Parquet schema (``SCHEMA``, ``FLAGS``) and row/table building
  (``rows_to_batch``, ``to_table``);
* ``run``: the run (``label(cfg, executor)``): input scan, resume, superseded rows,
  the two stages handed to the executor (``pipeline``), part files; and ``predict``
  for one clip.

No module here imports Ray: where the stages run is the executor's business. The
run's names are re-exported below; ``worker`` and ``schema`` are imported from their
modules, so importing the package (``avfusion label --help``) costs no torch.
"""

from avfusion.labelling.run import LABEL_EXTENSIONS, LabelConfig, label, predict

__all__ = ["LABEL_EXTENSIONS", "LabelConfig", "label", "predict"]
