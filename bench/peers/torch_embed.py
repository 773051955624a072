"""The peer a user would otherwise run to embed a catalog: one process, bare torch on every core.

    python -m bench.peers.torch_embed --catalog CATALOG_CSV --images-root IMAGES --weights MODEL.pth \
        --model resnet152 --output EMBEDDINGS_FOLDER

Reads the catalog CSV (``sku``, ``image_path``), loads the torchvision model from a ``state_dict`` file
(the classifier replaced by the identity: the pooled features), opens each JPEG with PIL, applies
``Resize(256)/CenterCrop(224)/ToTensor/Normalize`` and runs batches of 16 under ``torch.inference_mode``
(``--bf16``: also under CPU bf16 autocast, the precision the job picks on a CPU with native bf16), then
writes one Parquet file ``sku, embedding``. No checks, no quarantine: what it costs is the floor for a
whole process that reads the same images and writes the same vectors.
"""
from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BATCH_SIZE = 16


def load_model(model_name: str, weights: str | Path, threads: int) -> tuple[Any, Any]:
    """(model, transform): the torchvision backbone from a ``state_dict`` file, the classifier replaced by
    the identity, in eval mode on ``threads`` CPU threads; and the ImageNet preprocessing."""
    import torch
    import torchvision
    from torchvision import transforms

    torch.set_num_threads(threads)
    model = getattr(torchvision.models, model_name)(weights=None)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval()
    compose = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    return model, compose


def embed_files(model: Any, compose: Any, paths: Sequence[Path], bf16: bool = False) -> Any:
    """The vectors of the images at ``paths`` (float32, one row each): open, transform, batches of 16,
    under CPU bf16 autocast with ``bf16``."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    vectors = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(paths), BATCH_SIZE):
            batch = [
                compose(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
                for path in paths[start : start + BATCH_SIZE]
            ]
            vectors.append(model(torch.stack(batch)).float().numpy())
    return np.concatenate(vectors).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.peers.torch_embed", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--images-root", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--bf16", action="store_true", help="run the model under CPU bf16 autocast")
    args = parser.parse_args(argv)

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    model, compose = load_model(args.model, args.weights, args.threads)
    with open(args.catalog, newline="", encoding="utf-8") as stream:
        rows = [(row["sku"], row["image_path"]) for row in csv.DictReader(stream)]
    root = Path(args.images_root)
    matrix = embed_files(model, compose, [root / path for _, path in rows], bf16=args.bf16)
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    embedding = pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel()))
    Path(args.output).mkdir(parents=True, exist_ok=True)
    table = pa.table({"sku": [sku for sku, _ in rows], "embedding": embedding})
    pq.write_table(table, str(Path(args.output) / "part-00000.parquet"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
