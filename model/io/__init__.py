"""Raster I/O: the header checked and its decode cost bounded before any pixel is read, remote reads,
GDAL's messages in our words, the streamed ``.npy`` writer, and the GIS outputs beside it (the mask as a COG,
its quicklook PNG, the STAC Item). Imports nothing above :mod:`model.errors`.
"""
