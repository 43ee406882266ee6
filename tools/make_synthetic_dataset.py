"""Write the synthetic COCO-format grounding dataset (coloured shapes; see
maskrcnn_benchmark/data/datasets/synthetic.py).

Usage: python tools/make_synthetic_dataset.py --out datasets/synthetic --seed 0 [--num-train 800 --num-val 100]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskrcnn_benchmark.data.datasets.synthetic import generate_synthetic_dataset  # noqa: E402


def main() -> None:
    """Parse the arguments and write the dataset."""
    parser = argparse.ArgumentParser(description="Write the synthetic grounding dataset.")
    parser.add_argument("--out", default="datasets/synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    root = generate_synthetic_dataset(args.out, args.seed, args.num_train, args.num_val, args.size)
    print(f"synthetic dataset written to {root}")


if __name__ == "__main__":
    main()
