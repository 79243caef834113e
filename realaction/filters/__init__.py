"""Clip filters: the cheap ones on every candidate (`quality`, `motion`), the model ones on the survivors
(`model_filters`: `text_overlay`, `people`/`onnx_person`, the CLIP person score), and near-duplicates (`dedup`)."""
