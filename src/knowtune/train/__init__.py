"""Fine-tuning without forgetting: the self-distillation loss (:mod:`.losses`), parameter
freezing presets (:mod:`.freezing`) and the self-distillation ``Trainer`` (:mod:`.selfdistill`).

Kaplan, Gekhman et al., "Why Fine-Tuning Encourages Hallucinations and How to Fix It",
arXiv 2604.15574 (2026).
"""
