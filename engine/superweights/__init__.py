"""Super weights of a pretrained LLM (Yu et al. 2024, arXiv 2411.07191): detection, ablation, quantization."""
