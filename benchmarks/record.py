"""Recording throughput: images/s for the built-in ViT and a transformers ViT-B/16 config (random weights), split
into decode, model and write time so the slowest stage shows.

    python benchmarks/record.py                  # CPU, 64 generated 224x224 images
    python benchmarks/record.py --device cuda --n 2048 --batch-size 256
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main() -> None:
    from saev_ops.record import RecordSpec, record_dataset
    from saev_ops.record.images import generate_images
    from saev_ops.registry import Registry

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-record-bench-"))
    try:
        generate_images(tmp / "imgs", args.n, size=256, n_classes=4)
        import transformers

        vit = tmp / "vit-b16"
        transformers.ViTModel(transformers.ViTConfig(image_size=224, patch_size=16)).save_pretrained(vit)
        reg = Registry(f"sqlite:///{tmp / 'r.sqlite'}")
        print(f"{'model':22} {'images/s':>9} {'decode s':>9} {'model s':>8} {'write s':>8} {'wall s':>7}")
        for name, model in [("builtin:small", "builtin:small"), ("builtin:base", "builtin:base"),
                            ("transformers ViT-B/16", f"vit:{vit}")]:
            t0 = time.perf_counter()
            d = record_dataset(reg, RecordSpec(name=name.replace(" ", "-").replace("/", "-").replace(":", "-"),
                                               images=str(tmp / "imgs"), model=model, layers=(-1,),
                                               batch_size=args.batch_size, device=args.device, n_workers=args.workers,
                                               data_root=str(tmp / "data")))
            wall = time.perf_counter() - t0
            t = d.extra["timings"]
            print(f"{name:22} {t['images'] / wall:9.1f} {t['decode_s']:9.2f} {t['model_s']:8.2f} {t['write_s']:8.2f} "
                  f"{wall:7.2f}", flush=True)
        print("(decode s sums the decoding threads' time; it overlaps the model)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
