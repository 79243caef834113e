"""`realdpo eval`: motion (dynamic degree, smoothness, flicker), CLIP text alignment, FVD and preference accuracy."""
