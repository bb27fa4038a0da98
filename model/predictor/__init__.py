"""The tiled whole-raster predictor and its maths: tiling and seams, p90 statistics, fan-out row bands."""
