"""VGMED questions in evaluation harnesses: written by `vgmed-build export` (needs no vgmed installed).

- lmms-eval: the task YAMLs next to this file (saved as ``utils.py``) name ``doc_to_visual``,
  ``doc_to_text`` and ``process_results``; the data is the Hub Parquet layout in the same folder.
- VLMEvalKit: ``VGMEDDataset`` (saved as ``vgmed_vlmevalkit.py``) reads ``$LMUData/<name>.tsv`` and scores
  the predictions; the class is built when first used, so this file imports without VLMEvalKit.

Scoring is normalised exact match (case, punctuation, articles and spacing ignored), per question.
"""

from __future__ import annotations

import re
import string

# The short-answer instruction of the published evaluation (vgmed-eval uses the same words).
POST_PROMPT = " Answer the question using a single word or phrase."
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: object) -> str:
    """Lower case, punctuation and articles removed, spaces collapsed."""
    return " ".join(_ARTICLES.sub(" ", _PUNCT.sub(" ", str(text).lower())).split())


def exact_match(prediction: object, answer: object) -> float:
    """1.0 when the normalised prediction equals the normalised reference answer, else 0.0."""
    return float(normalize(prediction) == normalize(answer))


# ---------------------------------------------------------------- lmms-eval


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', POST_PROMPT)}"


def process_results(doc: dict, results: list) -> dict:
    return {"exact_match": exact_match(results[0] if results else "", doc["answer"])}


# ---------------------------------------------------------------- VLMEvalKit


def _vlmevalkit_class():
    import os.path as osp

    import pandas as pd
    from vlmeval.dataset.image_base import ImageBaseDataset
    from vlmeval.smp import LMUDataRoot, dump, load

    class VGMEDDataset(ImageBaseDataset):
        """A VGMED TSV exported by vgmed (index, image, question, answer, category = q_type, ...)."""

        TYPE = "VQA"
        DATASET_URL = {}  # local files only: $LMUData/<name>.tsv

        @classmethod
        def supported_datasets(cls):
            return ["VGMED_localization", "VGMED_attribute", "COCO_localization", "COCO_attribute"]

        def load_data(self, dataset):
            return load(osp.join(LMUDataRoot(), f"{dataset}.tsv"))

        def build_prompt(self, line):
            msgs = super().build_prompt(line)
            msgs[-1]["value"] += POST_PROMPT
            return msgs

        def evaluate(self, eval_file, **judge_kwargs):
            data = load(eval_file)
            data["hit"] = [exact_match(p, a) for p, a in zip(data["prediction"], data["answer"], strict=True)]
            rows = [{"split": "overall", "n": len(data), "accuracy": data["hit"].mean() * 100}]
            rows += [{"split": str(q), "n": len(g), "accuracy": g["hit"].mean() * 100}
                     for q, g in data.groupby("category")]
            result = pd.DataFrame(rows)
            dump(result, eval_file.rsplit(".", 1)[0] + "_acc.csv")
            return result

    return VGMEDDataset


def __getattr__(name: str):
    if name == "VGMEDDataset":
        return _vlmevalkit_class()
    raise AttributeError(name)
