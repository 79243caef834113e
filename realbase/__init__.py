"""realbase: what both halves stand on (curation in `realaction`, training in `realdpo`): one-line user errors,
typed option fields, atomic files and JSON lines, video decode/encode, text safe to print, the caption cap, the
refusal of a model folder's own code, and the CLIP model both the filters and the evaluation load. It imports
neither half."""
