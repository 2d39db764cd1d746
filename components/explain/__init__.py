"""Per-prediction explanations: which words pushed a classifier towards its label and which away.

``words`` defines the unit (a word, never a word piece or character n-gram) and the common
result; ``linear`` gives the TF-IDF model's exact contributions; ``occlusion`` serves every
other classifier (the torch ones) by deleting one word at a time; ``gradients`` gives the torch
ones integrated gradients on their token embeddings (Captum).
"""
