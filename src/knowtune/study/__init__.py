"""The controlled study of Gekhman et al., "Does Fine-Tuning LLMs on New Knowledge Encourage
Hallucinations?" (EMNLP 2024, arXiv 2405.05904): :mod:`.config` (StudyConfig), :mod:`.pipeline`
(annotate, curate, train, analyse; resumable), :mod:`.analysis` (ES/CONV, linear model,
Table 2, IDK table), :mod:`.findings` (the five findings), :mod:`.paper` (reference numbers).
See docs/study.md.
"""
