"""Executors: the only library modules that import Ray (``ray_data``: the label job's
Ray Data pipeline). The package's executor interface arrives with the preprocess
package (issue 20); this file only makes the package importable until then."""
