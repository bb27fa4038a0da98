"""Inference core: the U-Net, checkpoint loading, model cards and the tiled whole-raster predictor.

Pure computation over arrays and open datasets; nothing here reads the environment or talks to S3.
"""
