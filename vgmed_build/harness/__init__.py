"""Files `vgmed-build export` writes next to the data for evaluation harnesses (lmms-eval, VLMEvalKit).

They run inside the harness's environment, where vgmed need not be installed, so they import nothing
from vgmed.
"""
