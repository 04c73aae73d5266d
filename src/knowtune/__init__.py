"""knowtune: fine-tune language models without teaching them to hallucinate.

Gekhman et al., "Does Fine-Tuning LLMs on New Knowledge Encourage Hallucinations?",
EMNLP 2024 (arXiv 2405.05904); Kaplan, Gekhman et al., arXiv 2604.15574 (2026).
"""

__version__ = "0.1.0"
