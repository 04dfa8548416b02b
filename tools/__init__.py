"""Repository tools that are not part of the installed package (``pip install`` leaves them out)."""
