"""Scene-cut detection inside the single decode pass: PySceneDetect's detectors fed what its own pipeline feeds
them (`scenes`), scored beside decoding (`pipelined_scenes`), or the learned TransNetV2 (`transnet`)."""
