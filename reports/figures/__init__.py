"""The report's figures, one module per family; each function takes frames (or a result
table) and returns a :class:`~matplotlib.figure.Figure`, which :func:`.style.save_figure`
writes as PNG and PDF."""
