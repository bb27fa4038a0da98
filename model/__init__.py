"""Inference core: the U-Net, checkpoint loading, model cards and the tiled whole-raster predictor.

Pure computation over arrays and open datasets; nothing here reads our configuration or talks to S3.
GDAL and PROJ are prepared on import, before any module of ours imports rasterio (see
:func:`model.io.gdal_messages.prepare_gdal`): their diagnostics go to our log, never to stderr.
"""

from model.io.gdal_messages import prepare_gdal

prepare_gdal()
