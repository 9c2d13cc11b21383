"""vgmed_eval: measure where medical multimodal LLMs look (grounding metrics, VGRefine, VQA)."""

__version__ = "0.1.0"
