"""Vision engines on ONNX Runtime: PP-OCR text reading and YOLO object detection.

Entry point: ``engines.vision.base.load_vision_model(manifest, directory, VisionOptions())``.
Modules: base (contract, options, factory) · types (results) · image (safe decoding,
letterbox) · providers (TensorRT -> CUDA -> CPU) · batcher (dynamic batching) · ocr ·
detect · quantize (INT8 QDQ) · tensorrt (engine builds and cache).
"""
