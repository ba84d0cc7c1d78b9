"""Multiple-choice scoring through lm-evaluation-harness (`pip install 'unlearn-audit[lm-eval]'`), handed
the model object we loaded (full, quantized or attacked), never re-loaded from disk.

Each subject's items are written as a local JSONL task with the harness's own WMDP/MMLU template
(`doc_to_text`, choices "A".."D" after a space, metric acc), so the harness runs offline on any corpus;
its per-sample log-likelihoods come back for our per-item logs. On tokenizers that add no BOS token
(SmolLM2's) the harness scores without one, while the builtin engine puts `document_prefix` first.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from ..errors import UserError
from ..utils.quiet import verbose
from .mc_template import LETTERS, subject_words

TEMPLATE = ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}"
            "\nAnswer:")


def require_harness():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("--mc-engine lm-eval needs lm-evaluation-harness: pip install 'unlearn-audit[lm-eval]'") from None


def task_config(name: str, data: Path, subject: str) -> dict:
    """A harness task over a local JSONL file, as the harness's WMDP tasks define theirs."""
    return {"task": name, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(data.resolve())}}, "test_split": "test",
            "num_fewshot": 0, "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about {subject_words(subject)}.\n\n",
            "doc_to_text": TEMPLATE, "doc_to_choice": list(LETTERS), "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1}}


def harness_loglikelihoods(model, tokenizer, subjects: dict[str, list[dict]], batch_size: int | None) -> dict:
    """{subject: per item, the log-likelihood of " A".." D"} computed by lm-evaluation-harness."""
    require_harness()
    import yaml
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not verbose():
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    was_training = model.training
    names = {s: f"unlearn_audit_{i}" for i, s in enumerate(subjects)}
    with tempfile.TemporaryDirectory(prefix="unlearn-audit-lmeval-") as tmp:
        folder = Path(tmp)
        for subject, items in subjects.items():
            data = folder / f"{names[subject]}.jsonl"
            data.write_text("".join(json.dumps({"question": it["question"], "choices": it["choices"],
                                                "answer": int(it["answer"])}) + "\n" for it in items))
            (folder / f"{names[subject]}.yaml").write_text(yaml.safe_dump(task_config(names[subject], data, subject)))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size or 8)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        result = evaluate(lm=lm, task_dict=manager.load(list(names.values())), log_samples=True, bootstrap_iters=0,
                          verbosity="ERROR" if not verbose() else "INFO")
    if was_training:
        model.train()
    out = {}
    for subject, name in names.items():
        samples = sorted(result["samples"][name], key=lambda s: s["doc_id"])
        out[subject] = [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples]
    return out
