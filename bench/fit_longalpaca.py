"""Cut LongAlpaca-format prompts to a token budget of a given tokenizer, keeping the question.

Used for the GPU reference run: its Qwen2-0.5B-architecture model has a tokenizer trained offline
on a small corpus, which splits the fixture documents into about 3x more tokens than Qwen's own
tokenizer would. Cutting each document to N tokens restores the field report's ~7k-token prompts.

    python bench/fit_longalpaca.py IN.json OUT.json --tokenizer MODEL_DIR --tokens 7400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pytest_llmslo.tokens import open_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--tokenizer", required=True, help="model directory holding tokenizer.json")
    ap.add_argument("--tokens", type=int, default=7400, help="prompt length to aim for")
    opts = ap.parse_args()
    tokenizer = open_tokenizer(opts.tokenizer)
    items = json.loads(opts.src.read_text(encoding="utf-8"))
    for item in items:
        text: str = item["instruction"]
        # the question is the last paragraph: keep it whole and cut the document before it
        document, _, question = text.rpartition("\n\n")
        budget = opts.tokens - tokenizer.count(question) - 2
        ids = tokenizer.encode(document)[: max(budget, 0)]
        item["instruction"] = tokenizer.decode(ids) + "\n\n" + question
        print(f"{tokenizer.count(text)} -> {tokenizer.count(item['instruction'])} tokens")
    opts.dst.parent.mkdir(parents=True, exist_ok=True)
    opts.dst.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
