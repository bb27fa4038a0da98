"""Inference engines: what turns a batch of normalised tiles into scores, behind one small interface.

- :mod:`model.network.engines.torch_engine`: PyTorch, the reference (bit-exact one-tile masks, CUDA, training).
- :mod:`model.network.engines.openvino_engine`: OpenVINO, the serving engine of the torch-free image (fp32, bf16 where
  the CPU has it, int8), running the graphs ``rasterfn export`` wrote (:mod:`model.training.export`).

:func:`model.network.engines.loading.load_inference_model` picks one (``ENGINE=auto|torch|openvino``); the tiled
predictor (:mod:`model.predictor.predict`) only ever sees :class:`model.network.engines.base.TileEngine`.
Nothing importable from here without torch imports torch.
"""
