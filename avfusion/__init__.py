"""avfusion: audio-visual event recognition over large video collections.

Data flows one way: source → download → decode → shard → loader → model → report.
The library holds no Ray code in its model; distributed wiring lives in the jobs.
"""

__version__ = "0.1.0"
