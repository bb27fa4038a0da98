"""Write data/test-1.tif, the scene the README's curl command and `rasterfn demo` use.

It is a held-out synthetic scene (seed TEST_SCENE_SEED, never seen in training), 512 x 512 x 10 uint16,
georeferenced in UTM 33N at 10 m. Usage: `python scripts/make_test_scene.py [--out data/test-1.tif]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.training.synthetic import make_scene, write_scene_tif
from model.training.train_demo import TEST_SCENE_SEED

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "test-1.tif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=TEST_SCENE_SEED)
    args = parser.parse_args()
    image, label = make_scene(args.seed)
    write_scene_tif(args.out, image)
    print(f"wrote {args.out}: seed {args.seed}, shape {image.shape}, canopy fraction {label.mean():.3f}")


if __name__ == "__main__":
    main()
