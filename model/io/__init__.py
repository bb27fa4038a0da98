"""Raster I/O: the header checked and its decode cost bounded before any pixel is read, remote reads,
GDAL's messages in our words, and the streamed ``.npy`` writer. Imports nothing above :mod:`model.errors`.
"""
