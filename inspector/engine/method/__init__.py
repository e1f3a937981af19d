"""SISE's numeric steps on feature maps and layer maps, plain numpy: Otsu's threshold (otsu), which maps
to keep (selection), predicting unscored maps' scores (surrogate), the cascaded fusion (fusion), and
regions of evidence in a map (regions)."""
