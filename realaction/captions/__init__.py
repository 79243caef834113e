"""Captions for kept clips: sidecar files, a CLIP action vocabulary or a local vision-language model."""
