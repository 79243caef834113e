"""Reading sources: discovery and probing (`probe`), the segmenter that cuts scenes into clips (`segments`), and
the synthetic and bundled footage tests, benchmarks and the demo curate (`footage`)."""
