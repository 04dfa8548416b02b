"""The builder of the bundled sample set (``build``) and the Qt resource reader it needs (``rcc``)."""
